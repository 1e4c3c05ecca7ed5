//! The whole reader on mutated bootstraps (see `checks::read_image`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::read_image(data));
