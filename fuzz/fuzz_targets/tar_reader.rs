#![no_main]
//! `cargo +nightly fuzz run tar_reader`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgforge_fuzz::tar_reader(data));
