//! Tar layer reading and building (see `checks::tar_layer`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tar_layer(data));
