//! The builder fed random tree descriptions (see `checks::build_tree`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::build_tree(data));
