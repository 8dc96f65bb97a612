#![no_main]
//! `cargo +nightly fuzz run reference`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgforge_fuzz::reference(data));
