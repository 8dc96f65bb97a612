#![no_main]
//! `cargo +nightly fuzz run manifest`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgforge_fuzz::manifest(data));
