//! `POST /v1/dry-run` bodies through the real router: see `harness::http`.
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)] // each target drives one entry point of the shared harness
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::http(data, harness::Route::DryRun);
});
