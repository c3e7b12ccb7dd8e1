//! libFuzzer entry point of the `relay_server` target; the body is golem_vpn_fuzz::relay::run_server.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| golem_vpn_fuzz::relay::run_server(data));
