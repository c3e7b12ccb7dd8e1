//! The relay's I/O shell: one non-blocking UDP socket around [`RelayServer`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::relay::{RelayServer, RelayStats};

/// A relay bound to a UDP socket. An event loop calls [`UdpRelay::process`] when the
/// socket is readable and [`UdpRelay::expire`] now and then.
#[derive(Debug)]
pub struct UdpRelay {
    socket: UdpSocket,
    server: RelayServer,
    buf: Vec<u8>,
    out: Vec<(SocketAddr, Vec<u8>)>,
    send_errors: u64,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("registrations", &self.registrations())
            .finish_non_exhaustive()
    }
}

impl UdpRelay {
    /// Binds the relay's socket.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = super::bind_udp(addr)?;
        Ok(UdpRelay {
            socket,
            server: RelayServer::new(),
            buf: vec![0u8; 65535],
            out: Vec::new(),
            send_errors: 0,
        })
    }

    /// The socket (to watch for readability).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The relay's counters.
    pub fn stats(&self) -> RelayStats {
        self.server.stats()
    }

    /// Datagrams the socket refused to send.
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// Live registrations.
    pub fn registrations(&self) -> usize {
        self.server.registrations()
    }

    /// Reads up to `max` datagrams and sends the replies and forwards they cause.
    pub fn process(&mut self, now: Instant, max: usize) -> usize {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut read = 0;
        while read < max {
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    read += 1;
                    self.server
                        .handle(from, &self.buf[..n], now, unix, &mut self.out);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => read += 1,
            }
            for (dst, bytes) in self.out.drain(..) {
                if self.socket.send_to(&bytes, dst).is_err() {
                    self.send_errors += 1;
                }
            }
        }
        read
    }

    /// Drops expired registrations.
    pub fn expire(&mut self, now: Instant) {
        self.server.expire(now);
    }
}
