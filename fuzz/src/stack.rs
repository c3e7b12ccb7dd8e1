//! `stack`: the userspace stack's `receive` (and the poll that processes what it
//! queued), with a TCP listener on port 80 (backlog 2), a UDP socket on 53 and an ICMP
//! socket, at 10.9.0.1/24 and fd00:9::1/64.
//!
//! Ops (modulo 4): 0-1 a packet arrives; 2 time passes (`u16` ms) and the stack polls;
//! 3 the application side works: accepts connections, reads and answers them, echoes
//! UDP datagrams, or closes / aborts / releases a connection.
//!
//! Checks: every packet is counted (accepted, refused, or a SYN dropped for a full
//! backlog); what the stack sends is a valid IP packet (header, checksum), no larger than
//! the MTU, from one of its own addresses; the output counters match what poll returned;
//! the socket count stays bounded by what the backlog allows.

use smoltcp::time::{Duration, Instant};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use golem_vpn::stack::{Stack, StackConfig};
use golem_vpn::wire::IpPacket;

use crate::{Input, put_frame};

const MTU: usize = 1400;

fn config(addresses: Vec<(IpAddr, u8)>, seed: u64) -> StackConfig {
    StackConfig {
        addresses,
        mtu: MTU,
        tcp_rx_buffer: 8 * 1024,
        tcp_tx_buffer: 8 * 1024,
        udp_buffer: 8 * 1024,
        random_seed: seed,
        ..StackConfig::default()
    }
}

/// The stack's IPv4 address.
pub const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
/// The stack's IPv6 address.
pub const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1);

fn check_output(stack: &Stack, out: &[Vec<u8>], total: &mut (u64, u64)) {
    for p in out {
        assert!(p.len() <= MTU, "a packet of {} bytes over the MTU", p.len());
        let ip = IpPacket::parse(p).expect("the stack sends valid IP packets");
        if std::env::var_os("FUZZ_DEBUG").is_some() {
            eprintln!(
                "sent {}",
                p.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
        assert_eq!(ip.bytes().len(), p.len(), "no trailing bytes");
        assert!(
            ip.src() == IpAddr::V4(LOCAL4) || ip.src() == IpAddr::V6(LOCAL6),
            "sent from {}",
            ip.src()
        );
        total.0 += 1;
        total.1 += p.len() as u64;
    }
    let s = stack.stats();
    assert_eq!((s.packets_out, s.bytes_out), *total, "output counters");
}

/// The target's body.
pub fn run(data: &[u8]) {
    let start = Instant::from_millis(1_000_000);
    let mut now = start;
    let addresses = vec![(LOCAL4.into(), 24), (LOCAL6.into(), 64)];
    let mut stack = Stack::new(config(addresses, 7), now).expect("a stack");
    let (listener, _) = stack.tcp_listen(80, 2).unwrap();
    let (udp, _) = stack.udp_bind(53).unwrap();
    let icmp = stack.icmp_open().unwrap();
    let mut conns = Vec::new();
    let mut input = Input::new(data);
    let mut calls = 0u64;
    let mut out_total = (0u64, 0u64);
    let mut buf = vec![0u8; 4096];
    while let Some(op) = input.byte() {
        match op % 4 {
            0 | 1 => {
                let p = input.frame();
                stack.receive(p);
                calls += 1;
                let s = stack.stats();
                assert_eq!(
                    s.packets_in + s.dropped_in + s.syn_dropped,
                    calls,
                    "every packet counted"
                );
            }
            2 => {
                now += Duration::from_millis(u64::from(input.u16().unwrap_or(0)));
                let out = stack.poll(now, 64);
                check_output(&stack, &out, &mut out_total);
            }
            _ => {
                let arg = input.byte().unwrap_or(0);
                match arg % 6 {
                    0 => {
                        while let Ok(Some(c)) = stack.tcp_accept(listener) {
                            conns.push(c);
                        }
                    }
                    1 => {
                        for &c in &conns {
                            if let Ok(n) = stack.tcp_recv(c, &mut buf)
                                && n > 0
                            {
                                let _ = stack.tcp_send(c, &buf[..n]);
                            }
                            assert!(stack.tcp_status(c).is_ok());
                        }
                    }
                    2 => {
                        while let Ok(Some(d)) = stack.udp_recv_from(udp) {
                            assert!(d.data.len() <= MTU);
                            let _ = stack.udp_send_to(udp, &d.data, d.src);
                        }
                        while let Ok(Some(_)) = stack.ping_recv(icmp) {}
                    }
                    3 => {
                        if let Some(&c) = conns.get(usize::from(arg >> 3) % conns.len().max(1)) {
                            let _ = stack.tcp_shutdown(c);
                        }
                    }
                    4 => {
                        if let Some(&c) = conns.get(usize::from(arg >> 3) % conns.len().max(1)) {
                            let _ = stack.tcp_abort(c);
                        }
                    }
                    _ => {
                        if !conns.is_empty() {
                            let c = conns.remove(usize::from(arg >> 3) % conns.len());
                            assert!(stack.release(c).is_ok());
                            assert!(stack.release(c).is_err(), "a released socket is gone");
                        }
                    }
                }
                let out = stack.poll(now, 64);
                check_output(&stack, &out, &mut out_total);
            }
        }
        // Each packet makes at most one connection; listeners and the two others besides.
        assert!(
            stack.socket_count() as u64 <= 8 + calls,
            "sockets: {}",
            stack.socket_count()
        );
    }
    now += Duration::from_millis(1000);
    let out = stack.poll(now, 1 << 20);
    check_output(&stack, &out, &mut out_total);
}

/// Seeds: a real client's packets (another `Stack`): a TCP connection with data and its
/// close, UDP datagrams and pings, over IPv4 and IPv6.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, remote) in [
        ("tcp4", SocketAddr::new(LOCAL4.into(), 80)),
        ("tcp6", SocketAddr::new(LOCAL6.into(), 80)),
    ] {
        seeds.push((name.to_string(), tcp_conversation(remote)));
    }
    for (name, local, dst) in [
        (
            "udp_icmp4",
            IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)),
            IpAddr::V4(LOCAL4),
        ),
        (
            "udp_icmp6",
            IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2)),
            IpAddr::V6(LOCAL6),
        ),
    ] {
        let now = Instant::from_millis(1_000_000);
        let prefix = if local.is_ipv4() { 24 } else { 64 };
        let mut client = Stack::new(config(vec![(local, prefix)], 11), now).unwrap();
        let (u, _) = client.udp_bind(0).unwrap();
        client
            .udp_send_to(u, b"query", SocketAddr::new(dst, 53))
            .unwrap();
        let i = client.icmp_open().unwrap();
        client.ping_send(i, dst, 1, b"ping payload").unwrap();
        let mut v = Vec::new();
        for p in client.poll(now, 64) {
            v.push(0);
            put_frame(&mut v, &p);
        }
        v.extend_from_slice(&[2, 0, 1, 3, 2]);
        seeds.push((name.to_string(), v));
    }
    seeds
}

/// A connection from a client stack to `remote`, run against a server like the target's;
/// returns the client's packets as receive ops, with the app ops in between.
fn tcp_conversation(remote: SocketAddr) -> Vec<u8> {
    let mut now = Instant::from_millis(1_000_000);
    let local: IpAddr = if remote.is_ipv4() {
        Ipv4Addr::new(10, 9, 0, 2).into()
    } else {
        Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2).into()
    };
    let prefix = if remote.is_ipv4() { 24 } else { 64 };
    let mut client = Stack::new(config(vec![(local, prefix)], 11), now).unwrap();
    let addresses = vec![(LOCAL4.into(), 24), (LOCAL6.into(), 64)];
    let mut server = Stack::new(config(addresses, 7), now).unwrap();
    let (listener, _) = server.tcp_listen(80, 2).unwrap();
    let c = client.tcp_connect(remote).unwrap();
    let mut ops = Vec::new();
    let mut accepted = None;
    let mut sent = false;
    for round in 0..40 {
        now += Duration::from_millis(1);
        for p in client.poll(now, 64) {
            ops.push(0);
            put_frame(&mut ops, &p);
            server.receive(&p);
        }
        for p in server.poll(now, 64) {
            client.receive(&p);
        }
        ops.extend_from_slice(&[3, 0, 3, 1]);
        if accepted.is_none() {
            accepted = server.tcp_accept(listener).ok().flatten();
        }
        if let Some(s) = accepted {
            let mut buf = [0u8; 256];
            if let Ok(n) = server.tcp_recv(s, &mut buf)
                && n > 0
            {
                let _ = server.tcp_send(s, &buf[..n]);
            }
        }
        if client.tcp_status(c).unwrap().established && !sent {
            client.tcp_send(c, b"GET / HTTP/1.0\r\n\r\n").unwrap();
            sent = true;
        } else if sent && round == 20 {
            client.tcp_shutdown(c).unwrap();
        }
    }
    ops
}
