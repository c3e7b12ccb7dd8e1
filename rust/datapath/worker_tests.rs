//! The datapath thread end to end on loopback: VM frame endpoints on two workers, the
//! frames a "runtime" socket sends and receives, and what Python's queue gets.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use smoltcp::wire::{EthernetAddress, EthernetProtocol};

use super::*;
use crate::datapath::sys;
use crate::identity::Identity;
use crate::router::{Medium, Router, RouterConfig};
use crate::tunnel::Config;
use crate::wire::build::{arp_request, ethernet, udp_v4};
use crate::wire::payload_mac;

const NET: &str = "fedcba9876543210fedcba9876543210";

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, last)
}

fn mac(last: u8) -> EthernetAddress {
    payload_mac(IpAddr::V4(v4(last)), false)
}

fn node(n: u8) -> UdpNode {
    let identity = Identity::from_secret_bytes(&[n + 40; 32]).unwrap();
    UdpNode::bind(
        &identity,
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        u64::from(n),
    )
    .unwrap()
}

fn router(node: &UdpNode, last: u8, medium: Medium) -> Router {
    Router::new(RouterConfig {
        network_id: NET.into(),
        cidrs: vec!["10.9.0.0/24".parse().unwrap()],
        local_node: node.node_id(),
        local_ips: vec![IpAddr::V4(v4(last))],
        medium,
        requestor: None,
    })
    .unwrap()
}

/// Two workers in one network (A at .1, B at .2), each knowing the other's address.
fn pair(medium_a: Medium, medium_b: Medium) -> (Worker, Worker) {
    let (mut a, mut b) = (node(1), node(2));
    a.add_network(router(&a, 1, medium_a));
    b.add_network(router(&b, 2, medium_b));
    let (a_id, b_id) = (a.node_id(), b.node_id());
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    a.add_peer(NET, b_id, IpAddr::V4(v4(2)), Some(b_addr))
        .unwrap();
    b.add_peer(NET, a_id, IpAddr::V4(v4(1)), Some(a_addr))
        .unwrap();
    (Worker::start(a).unwrap(), Worker::start(b).unwrap())
}

fn attach_udp(worker: &Worker) -> (u32, SocketAddr) {
    let made = Attachment::vm(0, "udp://127.0.0.1:0", Vec::new()).unwrap();
    let url = made.name().to_owned();
    let id = worker
        .with(|s| {
            s.attach(vec![NET.into()], move |id, nets| {
                Ok(made.renumbered(id, nets))
            })
        })
        .unwrap();
    (id, url.trim_start_matches("udp://").parse().unwrap())
}

/// A runtime's socket (QEMU `-netdev socket,udp=ENDPOINT,localaddr=...`).
fn runtime(endpoint: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(endpoint).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Sends `frame` until a frame comes back that `want` accepts (the first frames may
/// race the handshake); bounded.
fn exchange(tx: &UdpSocket, frame: &[u8], rx: &UdpSocket, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 70000];
    while Instant::now() < deadline {
        tx.send(frame).unwrap();
        while let Ok(n) = rx.recv(&mut buf) {
            if want(&buf[..n]) {
                return buf[..n].to_vec();
            }
        }
    }
    panic!("no matching frame within 10 s");
}

fn udp_frame(src: u8, dst: u8, payload: &[u8]) -> Vec<u8> {
    let packet = udp_v4(v4(src), v4(dst), 4000, 5000, payload);
    ethernet(mac(src), mac(dst), EthernetProtocol::Ipv4, &packet)
}

#[test]
fn arp_is_answered_locally_with_yagnas_mac() {
    let (a, _b) = pair(Medium::Ethernet, Medium::Ethernet);
    let (_, endpoint) = attach_udp(&a);
    let vm = runtime(endpoint);
    let request = arp_request(mac(1), v4(1), v4(2));
    let reply = exchange(&vm, &request, &vm, |f| f.len() >= 42 && f[12..14] == [8, 6]);
    assert_eq!(&reply[..6], mac(1).as_bytes(), "to the asker");
    assert_eq!(&reply[6..12], mac(2).as_bytes(), "from 90:13:<target ip>");
    assert_eq!(&reply[14 + 6..14 + 8], &[0, 2], "an ARP reply");
    assert_eq!(&reply[14 + 14..14 + 18], &v4(2).octets(), "for the target");
}

#[test]
fn vm_frames_cross_the_tunnel_between_two_workers() {
    let (a, b) = pair(Medium::Ethernet, Medium::Ethernet);
    let (id_a, ep_a) = attach_udp(&a);
    let (id_b, ep_b) = attach_udp(&b);
    let vm_a = runtime(ep_a);
    let vm_b = runtime(ep_b);
    // B's runtime must speak first: the endpoint learns where the runtime is.
    vm_b.send(&arp_request(mac(2), v4(2), v4(1))).unwrap();
    let payload = b"hello from a VM, byte for byte";
    let frame = udp_frame(1, 2, payload);
    let got = exchange(&vm_a, &frame, &vm_b, |f| {
        f.len() > 14 && f[12..14] == [8, 0]
    });
    assert_eq!(&got[..6], mac(2).as_bytes());
    assert_eq!(&got[6..12], mac(1).as_bytes());
    assert_eq!(&got[14..], &frame[14..], "the IP packet arrives unchanged");
    let stats_a = a.read(|s| s.attachment(id_a).unwrap().stats);
    let stats_b = b.read(|s| s.attachment(id_b).unwrap().stats);
    assert!(stats_a.packets_in >= 1 && stats_b.packets_out >= 1);
    assert!(stats_b.bytes_out >= got.len() as u64);
}

#[test]
fn a_spoofed_source_from_the_vm_is_dropped_and_counted() {
    let (a, _b) = pair(Medium::Ethernet, Medium::Ethernet);
    let (id, endpoint) = attach_udp(&a);
    let vm = runtime(endpoint);
    vm.send(&udp_frame(9, 2, b"not mine")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.read(|s| s.attachment(id).unwrap().stats.router_drops) == 0 {
        assert!(
            Instant::now() < deadline,
            "the spoofed frame was not counted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn frames_for_a_network_without_attachment_are_queued_for_python() {
    let (a, b) = pair(Medium::Ethernet, Medium::Ip);
    let (_, endpoint) = attach_udp(&a);
    let vm = runtime(endpoint);
    let frame = udp_frame(1, 2, b"to a userspace stack");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "nothing reached Python's queue");
        vm.send(&frame).unwrap();
        // The event loop's descriptor becomes readable when something is queued.
        let mut fds = [sys::poll_fd(b.notify_fd(), sys::POLLIN)];
        if sys::poll(&mut fds, Some(Duration::from_millis(50))).unwrap() == 0 {
            continue;
        }
        let inbound = b.take_inbound();
        if let Some((net, packet)) = inbound.frames.first() {
            assert_eq!(net, NET);
            assert_eq!(&packet[..], &frame[14..], "an IP packet for the stack");
            break;
        }
    }
}

#[test]
fn attaching_twice_or_to_an_unknown_network_is_refused() {
    let (a, _b) = pair(Medium::Ethernet, Medium::Ethernet);
    let (first, _) = attach_udp(&a);
    let again = a.with(|s| {
        s.attach(vec![NET.into()], |id, nets| {
            Attachment::vm(id, "udp://127.0.0.1:0", nets)
        })
    });
    assert!(
        matches!(again, Err(WorkerError::AlreadyAttached { attachment, .. }) if attachment == first)
    );
    let unknown = a.with(|s| {
        s.attach(vec!["nope".into()], |id, nets| {
            Attachment::vm(id, "udp://127.0.0.1:0", nets)
        })
    });
    assert!(matches!(unknown, Err(WorkerError::UnknownNetwork(_))));
    assert!(a.with(|s| s.detach(first)));
    assert!(!a.with(|s| s.detach(first)), "detached once");
    let (_, _) = attach_udp(&a); // the network is free again
}

#[test]
fn bad_and_unreachable_endpoints_are_clear_errors() {
    let bad = Attachment::vm(1, "ftp://x", Vec::new()).unwrap_err();
    assert!(bad.to_string().contains("expected udp://"), "{bad}");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err =
        Attachment::vm(1, &format!("tcp-connect://127.0.0.1:{port}"), Vec::new()).unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert_eq!(
        err.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    let err = Attachment::vm(1, "unix:///nonexistent/golem-vpn.sock", Vec::new()).unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
}

fn read_prefixed(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut frame).unwrap();
    frame
}

#[test]
fn tcp_listen_endpoint_speaks_qemus_length_prefixed_frames() {
    let (a, _b) = pair(Medium::Ethernet, Medium::Ethernet);
    let made = Attachment::vm(0, "tcp-listen://127.0.0.1:0", Vec::new()).unwrap();
    let url = made.name().to_owned();
    let id = a
        .with(|s| {
            s.attach(vec![NET.into()], move |id, nets| {
                Ok(made.renumbered(id, nets))
            })
        })
        .unwrap();
    let addr: SocketAddr = url.trim_start_matches("tcp-listen://").parse().unwrap();
    let mut qemu = TcpStream::connect(addr).unwrap();
    qemu.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = arp_request(mac(1), v4(1), v4(2));
    // Two frames in one write, the second split across writes: framing, not segments.
    let mut bytes = Vec::new();
    for _ in 0..2 {
        bytes.extend_from_slice(&(request.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&request);
    }
    qemu.write_all(&bytes[..bytes.len() - 5]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    qemu.write_all(&bytes[bytes.len() - 5..]).unwrap();
    for _ in 0..2 {
        let reply = read_prefixed(&mut qemu);
        assert_eq!(&reply[12..14], &[8, 6]);
        assert_eq!(&reply[6..12], mac(2).as_bytes());
    }
    // A length no frame can have: the connection is dropped and counted.
    qemu.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.read(|s| s.attachment(id).unwrap().stats.framing_errors) == 0 {
        assert!(Instant::now() < deadline, "bad framing not counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The runtime reconnects and is served again.
    let mut again = TcpStream::connect(addr).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    again.write_all(&bytes[..4 + request.len()]).unwrap();
    assert_eq!(&read_prefixed(&mut again)[12..14], &[8, 6]);
}

#[test]
fn stopping_the_worker_joins_its_thread() {
    let (mut a, _b) = pair(Medium::Ip, Medium::Ip);
    assert!(a.is_running());
    a.stop();
    assert!(!a.is_running());
}

#[test]
fn unix_and_tcp_connect_endpoints_reach_a_listening_runtime() {
    use std::os::unix::net::UnixListener;
    let (a, _b) = pair(Medium::Ethernet, Medium::Ethernet);
    let request = arp_request(mac(1), v4(1), v4(2));

    // unix://: the runtime listens, we connect; u16 native-endian prefixes.
    let dir = std::env::temp_dir().join(format!("gvpn-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vpn.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let url = format!("unix://{}", path.display());
    let made = Attachment::vm(0, &url, Vec::new()).unwrap();
    let id = a
        .with(|s| {
            s.attach(vec![NET.into()], move |id, nets| {
                Ok(made.renumbered(id, nets))
            })
        })
        .unwrap();
    let (mut runtime, _) = listener.accept().unwrap();
    runtime
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut framed = (request.len() as u16).to_ne_bytes().to_vec();
    framed.extend_from_slice(&request);
    runtime.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    runtime.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u16::from_ne_bytes(len) as usize];
    runtime.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[12..14], &[8, 6]);
    assert_eq!(&reply[6..12], mac(2).as_bytes());
    assert!(a.with(|s| s.detach(id)));
    std::fs::remove_dir_all(&dir).unwrap();

    // tcp-connect://: the runtime listens (QEMU -netdev socket,listen=); u32 big-endian.
    let qemu = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp-connect://{}", qemu.local_addr().unwrap());
    let made = Attachment::vm(0, &url, Vec::new()).unwrap();
    a.with(|s| {
        s.attach(vec![NET.into()], move |id, nets| {
            Ok(made.renumbered(id, nets))
        })
    })
    .unwrap();
    let (mut runtime, _) = qemu.accept().unwrap();
    runtime
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut framed = (request.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    runtime.write_all(&framed).unwrap();
    let reply = read_prefixed(&mut runtime);
    assert_eq!(&reply[12..14], &[8, 6]);
    assert_eq!(&reply[6..12], mac(2).as_bytes());
}
