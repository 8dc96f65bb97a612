#![no_main]
//! `cargo +nightly fuzz run extract fuzz/corpus/extract testdata/layers/malicious`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgforge_fuzz::extract(data));
