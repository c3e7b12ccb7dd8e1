//! libFuzzer entry point of the `router_ethernet` target; the body is golem_vpn_fuzz::router::run_ethernet.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| golem_vpn_fuzz::router::run_ethernet(data));
