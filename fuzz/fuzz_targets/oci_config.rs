#![no_main]

#[path = "../../crates/devns-core/tests/fuzz/targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::oci_config(data));
