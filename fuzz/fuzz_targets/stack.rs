//! libFuzzer entry point of the `stack` target; the body is golem_vpn_fuzz::stack::run.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| golem_vpn_fuzz::stack::run(data));
