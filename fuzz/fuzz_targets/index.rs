#![no_main]
//! `cargo +nightly fuzz run index`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgforge_fuzz::index(data));
