//! libFuzzer entry point of the `wire` target; the body is golem_vpn_fuzz::wire::run.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| golem_vpn_fuzz::wire::run(data));
