//! The system calls that neither std nor nix wraps safely: creating a TUN device
//! (`TUNSETIFF`), waiting on several descriptors at once (`ppoll`) and steering a
//! `SO_REUSEPORT` group's datagrams with a classic BPF program.
//!
//! This is the only module of the crate allowed `unsafe`; each block says why it is sound.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// `_IOW('T', 202, int)` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
const TUN_F_USO4: libc::c_ulong = 0x20;
const TUN_F_USO6: libc::c_ulong = 0x40;

/// `struct ifreq` as TUNSETIFF reads it: the name, then a union whose first member is
/// the flags (40 bytes in all on every Linux ABI we build for).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// Checks an interface name as the kernel would (1..=15 bytes, no `/`, space or NUL).
pub fn check_ifname(name: &str) -> io::Result<()> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':');
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid interface name {name:?}: 1 to {} characters, no '/', ':' or spaces",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    Ok(())
}

/// Creates (or attaches to) the TUN device `name` (`IFF_TUN | IFF_NO_PI`: bare IP
/// packets) in the calling thread's network namespace, with `queues` queues (more than
/// one: `IFF_MULTI_QUEUE`, one file per queue; the kernel spreads the packets it sends by
/// flow). The files are non-blocking; closing them all deletes the device (it is not
/// persistent).
///
/// With `offload`, each packet carries a `virtio_net_hdr` (`IFF_VNET_HDR`) and the kernel
/// may hand over TCP packets of up to 64 KiB to segment (TSO4/TSO6), UDP ones too
/// (USO4/USO6, Linux 6.2+), and packets with checksums to complete; returns whether it
/// took USO (and so also takes USO packets written to it: UDP can be coalesced).
pub fn open_tun(name: &str, offload: bool, queues: usize) -> io::Result<(Vec<File>, bool)> {
    check_ifname(name)?;
    let queues = queues.max(1);
    let mut files = Vec::with_capacity(queues);
    let mut uso = false;
    for _ in 0..queues {
        let (file, took) = open_queue(name, offload, queues > 1)?;
        uso = took;
        files.push(file);
    }
    Ok((files, uso))
}

fn open_queue(name: &str, offload: bool, multi: bool) -> io::Result<(File, bool)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN
            | IFF_NO_PI
            | if offload { IFF_VNET_HDR } else { 0 }
            | if multi { IFF_MULTI_QUEUE } else { 0 },
        _union_rest: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is laid out as one
    // (checked by the size assertion below) and lives for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if !offload {
        return Ok((file, false));
    }
    let hdr_len: libc::c_int = super::offload::VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // UDP segmentation (Linux 6.2+) where the kernel has it, else TCP's alone.
    let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    let uso = TUN_F_USO4 | TUN_F_USO6;
    let taken = [tso | uso, tso].into_iter().find(|&flags| {
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD as _, flags) >= 0 }
    });
    // Refused (an old kernel): the header stays, but every packet comes whole.
    Ok((file, taken.is_some_and(|flags| flags & uso != 0)))
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

/// Readiness asked for and reported by [`poll`].
pub type PollFd = libc::pollfd;

/// Data to read.
pub const POLLIN: libc::c_short = libc::POLLIN;
/// Room to write.
pub const POLLOUT: libc::c_short = libc::POLLOUT;
/// Error, hang-up or an invalid descriptor.
pub const POLLBROKEN: libc::c_short = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;

/// A poll entry for `fd`.
pub fn poll_fd(fd: RawFd, events: libc::c_short) -> PollFd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (None: forever). Returns the
/// number of ready entries (0 on timeout or a signal).
pub fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as _,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a valid, exclusively borrowed array of `pollfd` of the length
    // given; `ts_ptr` is null or points to a timespec that outlives the call; a null
    // signal mask leaves the mask unchanged. The kernel only reads descriptor numbers
    // (a closed one is reported as POLLNVAL, never touched).
    let rc = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(rc as usize)
}

/// `SO_ATTACH_REUSEPORT_CBPF` from `<asm-generic/socket.h>` (Linux 4.5+).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// The classic BPF program that picks a `SO_REUSEPORT` group's socket for a datagram by
/// its lane (see [`crate::tunnel::data_lane`]): a data message on lane `l` goes to
/// socket `l % sockets`, anything else (lane 0, handshakes, relay and probe messages,
/// an empty datagram) to socket 0. The kernel runs it on the UDP payload.
pub fn lane_program(sockets: u32) -> [libc::sock_filter; 9] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld_b_abs, alu_and_k, alu_mod_k) = (0x30, 0x54, 0x94);
    let (jeq_k, ret_k, ret_a, tax, txa) = (0x15, 0x06, 0x16, 0x07, 0x87);
    [
        op(ld_b_abs, 0, 0, 0),     // A = payload[0] (no byte: the filter returns 0)
        op(tax, 0, 0, 0),          // X = A
        op(alu_and_k, 0, 0, 0xf0), // A &= 0xf0
        op(jeq_k, 1, 0, 0x40),     // a lane type (0x41..=0x4f)? skip the next
        op(ret_k, 0, 0, 0),        // no: socket 0
        op(txa, 0, 0, 0),          // A = X
        op(alu_and_k, 0, 0, 0x0f), // A = the lane
        op(alu_mod_k, 0, 0, sockets.max(1)), // A %= sockets
        op(ret_a, 0, 0, 0),        // socket A
    ]
}

/// Attaches [`lane_program`] to the `SO_REUSEPORT` group of `socket` (any member), which
/// has `sockets` members.
pub fn attach_lane_program(socket: &impl AsRawFd, sockets: u32) -> io::Result<()> {
    let mut program = lane_program(sockets);
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prog` points to `program`, which outlives the call, with its true length;
    // the kernel copies the program and validates it (a bad one is refused with EINVAL).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
