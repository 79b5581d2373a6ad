//! Policy loading (TOML + rhai): see `harness::policy_load`.
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)] // each target drives one entry point of the shared harness
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::policy_load(data);
});
