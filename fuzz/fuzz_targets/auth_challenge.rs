#![no_main]
//! `cargo +nightly fuzz run auth_challenge`: see fuzz/README.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgforge_fuzz::auth_challenge(data));
