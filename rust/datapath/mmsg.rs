//! Batched UDP syscalls: `recvmmsg` and `sendmmsg` (Linux), through `nix`'s safe wrappers.
//!
//! One syscall moves up to [`BATCH`] datagrams instead of one, which is most of the
//! per-packet cost of a userspace tunnel once the crypto is fast.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

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

/// Reads up to `bufs.len()` datagrams without blocking; appends `(length, source)` to
/// `out` (datagram `i` is in `bufs[i]`). An empty `out` with `Ok` means none was waiting.
pub fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [Vec<u8>],
    out: &mut Vec<(usize, SocketAddr)>,
) -> io::Result<()> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
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
        // A datagram from an address family we do not speak cannot be answered: skip it.
        if let Some(from) = r.address.as_ref().and_then(to_std) {
            out.push((r.bytes, from));
        } else {
            out.push((0, SocketAddr::from(([0, 0, 0, 0], 0))));
        }
    }
    Ok(())
}

/// Sends `bufs[i]` to `dsts[i]` for every `i`, in as few syscalls as the kernel allows.
/// Returns how many were sent; the rest failed (e.g. the socket buffer is full).
pub fn send_batch(socket: &UdpSocket, bufs: &[Vec<u8>], dsts: &[SocketAddr]) -> usize {
    let mut sent = 0;
    while sent < bufs.len() {
        let n = (bufs.len() - sent).min(BATCH);
        let slices: Vec<[IoSlice<'_>; 1]> = bufs[sent..sent + n]
            .iter()
            .map(|b| [IoSlice::new(b)])
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
                if socket.send_to(&bufs[sent], dsts[sent]).is_ok() {
                    sent += 1;
                } else {
                    break;
                }
            }
        }
    }
    sent
}
