//! Snapshot parsing, JSON lines: see `harness::snapshot`.
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)] // each target drives one entry point of the shared harness
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::snapshot(data, tierwise::snapshot::Format::Jsonl));
