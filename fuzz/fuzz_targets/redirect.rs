#![no_main]
//! `cargo +nightly fuzz run redirect`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgforge_fuzz::redirect(data));
