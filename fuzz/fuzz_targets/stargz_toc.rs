//! eStargz TOC parsing and layout (see `checks::stargz_toc`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::stargz_toc(data));
