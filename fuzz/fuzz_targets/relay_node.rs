//! libFuzzer entry point of the `relay_node` target; the body is golem_vpn_fuzz::relay::run_node.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| golem_vpn_fuzz::relay::run_node(data));
