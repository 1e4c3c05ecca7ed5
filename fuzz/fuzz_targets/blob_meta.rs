//! The blob meta header and chunk info entries (see `checks::blob_meta`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::blob_meta(data));
