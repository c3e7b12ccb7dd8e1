//! libFuzzer entry point of the `router_ip` target; the body is golem_vpn_fuzz::router::run_ip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| golem_vpn_fuzz::router::run_ip(data));
