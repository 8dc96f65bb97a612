#![no_main]
//! `cargo +nightly fuzz run tar_roundtrip`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgforge_fuzz::tar_roundtrip(data));
