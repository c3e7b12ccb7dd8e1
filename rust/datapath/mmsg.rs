//! Batched UDP syscalls: `recvmmsg` and `sendmmsg` (Linux), through `nix`'s safe wrappers.
//!
//! One syscall moves up to [`BATCH`] datagrams instead of one, which is most of the
//! per-packet cost of a userspace tunnel once the crypto is fast.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    sendmmsg, sendmsg,
};

/// Datagrams per syscall.
pub const BATCH: usize = 64;

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    addr.as_sockaddr_in6().map(|v6| {
        SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ))
    })
}

fn to_storage(addr: SocketAddr) -> SockaddrStorage {
    SockaddrStorage::from(addr)
}

/// One read: `len` bytes from `from`; with UDP GRO, several datagrams of `segment` bytes
/// each (the last may be shorter) that the kernel coalesced, else `segment == len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    /// Who sent them.
    pub from: SocketAddr,
    /// The size of each datagram in the buffer (0 only when `len` is 0).
    pub segment: usize,
}

impl Received {
    /// The byte range of each datagram in the buffer.
    pub fn datagrams(self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let step = self.segment.max(1);
        (0..self.len)
            .step_by(step)
            .map(move |at| at..(at + step).min(self.len))
    }
}

/// Turns UDP GRO on for `socket` (Linux 5.0+): the kernel then hands over runs of
/// datagrams from one sender in one read, and a UDP GSO send from a local peer (or one
/// a NIC or veth coalesced) is never segmented on its way in. False where unsupported;
/// reads work the same either way.
pub fn enable_gro(socket: &UdpSocket) -> bool {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGroSegment, &true).is_ok()
}

/// Reads up to `bufs.len()` reads without blocking; appends a [`Received`] to `out` for
/// each (read `i` is in `bufs[i]`). An empty `out` with `Ok` means none was waiting.
pub fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [Vec<u8>],
    out: &mut Vec<Received>,
) -> io::Result<()> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
        bufs.len(),
        Some(nix::cmsg_space!(libc::c_int)),
    );
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(&mut b[..])])
        .collect();
    let results = match recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    ) {
        Ok(results) => results,
        Err(nix::errno::Errno::EAGAIN) => return Ok(()),
        Err(e) => return Err(io::Error::from(e)),
    };
    for r in results {
        let segment = r
            .cmsgs()
            .ok()
            .into_iter()
            .flatten()
            .find_map(|c| match c {
                ControlMessageOwned::UdpGroSegments(size) => usize::try_from(size).ok(),
                _ => None,
            })
            .filter(|&s| s > 0)
            .unwrap_or(r.bytes);
        // A datagram from an address family we do not speak cannot be answered: skip it.
        match r.address.as_ref().and_then(to_std) {
            Some(from) => out.push(Received {
                len: r.bytes,
                from,
                segment,
            }),
            None => out.push(Received {
                len: 0,
                from: SocketAddr::from(([0, 0, 0, 0], 0)),
                segment: 0,
            }),
        }
    }
    Ok(())
}

/// UDP GSO (`UDP_SEGMENT`) in use: cleared for the process the first time the kernel
/// says it cannot (an old kernel, a device that cannot: `EIO`, `EINVAL`, `ENOPROTOOPT`,
/// `EOPNOTSUPP`), after which `sendmmsg` does it all. Other errors (a firewall's `EPERM`,
/// an unreachable network) leave it on.
static GSO: AtomicBool = AtomicBool::new(true);

/// Most segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS`), and most bytes.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65000;

/// How many datagrams from `i` on can go as one GSO send: same destination, same size
/// (the last may be shorter), within the kernel's limits. 1 means none.
fn gso_run<B: AsRef<[u8]>>(bufs: &[B], dsts: &[SocketAddr], i: usize) -> usize {
    let size = bufs[i].as_ref().len();
    let mut j = i + 1;
    let mut bytes = size;
    while j < bufs.len()
        && j - i < GSO_MAX_SEGMENTS
        && dsts[j] == dsts[i]
        && bufs[j].as_ref().len() <= size
        && bytes + bufs[j].as_ref().len() <= GSO_MAX_BYTES
    {
        bytes += bufs[j].as_ref().len();
        j += 1;
        if bufs[j - 1].as_ref().len() < size {
            break; // a shorter one ends the run
        }
    }
    j - i
}

/// Sends `bufs[i]` to `dsts[i]` for every `i`, in as few syscalls as the kernel allows:
/// runs of equal-sized datagrams to one peer (what a TSO packet becomes) as one UDP GSO
/// `sendmsg`, the rest with `sendmmsg`. Returns how many were sent; the rest failed (e.g.
/// the socket buffer is full).
pub fn send_batch<B: AsRef<[u8]>>(socket: &UdpSocket, bufs: &[B], dsts: &[SocketAddr]) -> usize {
    let mut sent = 0;
    while sent < bufs.len() {
        if GSO.load(Ordering::Relaxed) {
            let run = gso_run(bufs, dsts, sent);
            if run >= 2 {
                let size = bufs[sent].as_ref().len() as u16;
                let iov: Vec<IoSlice<'_>> = bufs[sent..sent + run]
                    .iter()
                    .map(|b| IoSlice::new(b.as_ref()))
                    .collect();
                let addr = to_storage(dsts[sent]);
                match sendmsg(
                    socket.as_raw_fd(),
                    &iov,
                    &[ControlMessage::UdpGsoSegments(&size)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&addr),
                ) {
                    Ok(_) => {
                        sent += run;
                        continue;
                    }
                    Err(nix::errno::Errno::EAGAIN) => break,
                    // No GSO here (an old kernel, a device that cannot): never again; the
                    // plain path sends these.
                    Err(
                        nix::errno::Errno::EIO
                        | nix::errno::Errno::EINVAL
                        | nix::errno::Errno::ENOPROTOOPT
                        | nix::errno::Errno::EOPNOTSUPP,
                    ) => GSO.store(false, Ordering::Relaxed),
                    // Anything else (a firewall's EPERM, an unreachable network) says
                    // nothing about GSO: the plain path tries these datagrams, GSO stays.
                    Err(_) => {}
                }
            }
        }
        // A plain batch, up to where the next GSO run starts.
        let gso = GSO.load(Ordering::Relaxed);
        let mut end = sent + 1;
        while end < bufs.len() && end - sent < BATCH && !(gso && gso_run(bufs, dsts, end) >= 2) {
            end += 1;
        }
        let n = end - sent;
        let slices: Vec<[IoSlice<'_>; 1]> = bufs[sent..sent + n]
            .iter()
            .map(|b| [IoSlice::new(b.as_ref())])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = dsts[sent..sent + n]
            .iter()
            .map(|d| Some(to_storage(*d)))
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
        match sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter(),
            &addrs,
            [],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(results) => {
                let done = results.count();
                if done == 0 {
                    break;
                }
                sent += done;
            }
            // A datagram the kernel refuses (e.g. an unreachable address) is skipped.
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(_) => {
                if socket.send_to(bufs[sent].as_ref(), dsts[sent]).is_ok() {
                    sent += 1;
                } else {
                    break;
                }
            }
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coalesced_read_splits_into_its_datagrams() {
        let r = Received {
            len: 2500,
            from: SocketAddr::from(([127, 0, 0, 1], 1)),
            segment: 1000,
        };
        assert_eq!(
            r.datagrams().collect::<Vec<_>>(),
            [0..1000, 1000..2000, 2000..2500]
        );
        let empty = Received {
            len: 0,
            segment: 0,
            ..r
        };
        assert_eq!(empty.datagrams().count(), 0);
    }

    #[test]
    fn a_refused_gso_send_leaves_gso_on() {
        // A socket without SO_BROADCAST may not send to the broadcast address: EACCES,
        // which says nothing about GSO. The datagrams fail; GSO stays as it was.
        let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
        let before = GSO.load(Ordering::Relaxed);
        let bufs = vec![vec![7u8; 1000]; 4];
        let dsts = vec![SocketAddr::from(([255, 255, 255, 255], 9)); 4];
        assert_eq!(send_batch(&tx, &bufs, &dsts), 0);
        assert!(before, "GSO works on Linux >= 4.18");
        assert_eq!(GSO.load(Ordering::Relaxed), before);
    }

    #[test]
    fn a_gso_send_arrives_as_one_gro_read_of_every_datagram() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        assert!(enable_gro(&rx), "UDP GRO is available on Linux >= 5.0");
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = rx.local_addr().unwrap();
        // Five datagrams, the last shorter: what a segmented TSO packet becomes.
        let bufs: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; if i == 4 { 300 } else { 1200 }])
            .collect();
        let dsts = vec![dst; bufs.len()];
        assert_eq!(send_batch(&tx, &bufs, &dsts), 5);
        let mut rbufs = vec![vec![0u8; 65535]; 4];
        let mut got = Vec::new();
        for _ in 0..100 {
            recv_batch(&rx, &mut rbufs, &mut got).unwrap();
            if got.iter().map(|r| r.datagrams().count()).sum::<usize>() >= 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.from, tx.local_addr().unwrap());
            for d in r.datagrams() {
                seen.push(rbufs[i][d].to_vec());
            }
        }
        assert_eq!(
            seen, bufs,
            "every datagram, in order, with its own boundaries"
        );
        // Loopback carries the GSO send whole, and GRO hands it over in one read.
        if GSO.load(Ordering::Relaxed) {
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].segment, 1200);
        }
    }
}
