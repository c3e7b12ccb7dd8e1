//! libFuzzer entry point of the `tunnel_datagram` target; the body is golem_vpn_fuzz::tunnel::run_datagram.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| golem_vpn_fuzz::tunnel::run_datagram(data));
