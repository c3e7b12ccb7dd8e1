//! Validated views of the frames a VPN node handles.
//!
//! The router never trusts a buffer: every frame that enters it is first checked here.
//! [`IpPacket::parse`] turns raw bytes into a view over an IPv4 or IPv6 packet whose
//! header is complete and self-consistent (length fields, IPv4 header checksum), and
//! cuts off trailing bytes that are not part of the packet (Ethernet padding).
//! TCP/UDP checksums are not checked: TUN offloads hand over partial ones, and they are
//! the receiving stack's business.
//!
//! The views sit on `smoltcp::wire`; this module adds the typed errors and the MAC
//! address scheme Golem's runtimes use (see [`payload_mac`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{EthernetAddress, Ipv4Packet, Ipv6Packet};

pub mod build;

/// The largest frame the router accepts (the IPv4 total-length limit).
pub const MAX_PACKET_LEN: usize = 65535;
/// Length of an Ethernet II header.
pub const ETHERNET_HEADER_LEN: usize = 14;
const IPV4_MIN_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

/// Why a buffer is not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The buffer is empty.
    #[error("empty frame")]
    Empty,
    /// The buffer is longer than [`MAX_PACKET_LEN`].
    #[error("frame of {0} bytes exceeds the 65535-byte limit")]
    Oversized(usize),
    /// The buffer ends before the header (or the length the header claims) does.
    #[error("truncated frame")]
    Truncated,
    /// The IP version nibble is neither 4 nor 6, or does not match the EtherType.
    #[error("IP version {0} is not supported here")]
    BadVersion(u8),
    /// The IPv4 header length field is below 20 bytes, or the total length is below it.
    #[error("inconsistent IP header length")]
    BadHeaderLength,
    /// The IPv4 header checksum does not match.
    #[error("bad IPv4 header checksum")]
    BadChecksum,
}

/// A validated IPv4 or IPv6 packet, trimmed to the length its header states.
#[derive(Debug, Clone, Copy)]
pub enum IpPacket<'a> {
    /// An IPv4 packet with a valid header checksum.
    V4(&'a [u8]),
    /// An IPv6 packet whose payload length fits the buffer.
    V6(&'a [u8]),
}

impl<'a> IpPacket<'a> {
    /// Validates `buf` as an IP packet (version from the first nibble).
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        check_size(buf)?;
        match buf[0] >> 4 {
            4 => Self::parse_v4(buf),
            6 => Self::parse_v6(buf),
            v => Err(WireError::BadVersion(v)),
        }
    }

    /// Validates `buf` as an IPv4 packet.
    pub fn parse_v4(buf: &'a [u8]) -> Result<Self, WireError> {
        check_size(buf)?;
        let version = buf[0] >> 4;
        if version != 4 {
            return Err(WireError::BadVersion(version));
        }
        if buf.len() < IPV4_MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        if header_len < IPV4_MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if buf.len() < header_len {
            return Err(WireError::Truncated);
        }
        let total_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if total_len < header_len {
            return Err(WireError::BadHeaderLength);
        }
        if buf.len() < total_len {
            return Err(WireError::Truncated);
        }
        if !Ipv4Packet::new_unchecked(buf).verify_checksum() {
            return Err(WireError::BadChecksum);
        }
        Ok(IpPacket::V4(&buf[..total_len]))
    }

    /// Validates `buf` as an IPv6 packet.
    pub fn parse_v6(buf: &'a [u8]) -> Result<Self, WireError> {
        check_size(buf)?;
        let version = buf[0] >> 4;
        if version != 6 {
            return Err(WireError::BadVersion(version));
        }
        if buf.len() < IPV6_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let total_len = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        if buf.len() < total_len {
            return Err(WireError::Truncated);
        }
        Ok(IpPacket::V6(&buf[..total_len]))
    }

    /// The packet's bytes, header included, without trailing padding.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        match *self {
            IpPacket::V4(b) | IpPacket::V6(b) => b,
        }
    }

    /// The source address.
    #[inline]
    pub fn src(&self) -> IpAddr {
        match *self {
            IpPacket::V4(b) => IpAddr::V4(Ipv4Packet::new_unchecked(b).src_addr()),
            IpPacket::V6(b) => IpAddr::V6(Ipv6Packet::new_unchecked(b).src_addr()),
        }
    }

    /// The destination address.
    #[inline]
    pub fn dst(&self) -> IpAddr {
        match *self {
            IpPacket::V4(b) => IpAddr::V4(Ipv4Packet::new_unchecked(b).dst_addr()),
            IpPacket::V6(b) => IpAddr::V6(Ipv6Packet::new_unchecked(b).dst_addr()),
        }
    }
}

#[inline]
fn check_size(buf: &[u8]) -> Result<(), WireError> {
    if buf.is_empty() {
        Err(WireError::Empty)
    } else if buf.len() > MAX_PACKET_LEN {
        Err(WireError::Oversized(buf.len()))
    } else {
        Ok(())
    }
}

/// The first two MAC octets of a provider payload's interface (yagna's scheme).
pub const PAYLOAD_MAC_PREFIX: [u8; 2] = [0x90, 0x13];
/// The first two MAC octets of the requestor's interface (yagna's scheme).
pub const REQUESTOR_MAC_PREFIX: [u8; 2] = [0xa0, 0x13];

/// The MAC address Golem gives the interface that holds `ip`: the two-octet prefix
/// followed by the IPv4 octets (for IPv6, its last four octets).
pub fn payload_mac(ip: IpAddr, requestor: bool) -> EthernetAddress {
    let prefix = if requestor {
        REQUESTOR_MAC_PREFIX
    } else {
        PAYLOAD_MAC_PREFIX
    };
    let low = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    EthernetAddress([prefix[0], prefix[1], low[0], low[1], low[2], low[3]])
}

/// The Ethernet destination for an IP destination that is broadcast or multicast:
/// `ff:ff:ff:ff:ff:ff`, `01:00:5e` + low 23 bits (IPv4), `33:33` + low 32 bits (IPv6).
pub fn group_mac(ip: IpAddr) -> EthernetAddress {
    match ip {
        IpAddr::V4(v4) if v4.is_multicast() => {
            let o = v4.octets();
            EthernetAddress([0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]])
        }
        IpAddr::V4(_) => EthernetAddress::BROADCAST,
        IpAddr::V6(v6) => {
            let o = v6.octets();
            EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
        }
    }
}

/// True for IPv6 link-local unicast (`fe80::/10`): such sources are never routed
/// between nodes.
#[inline]
pub fn is_ipv6_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// True for addresses that can never name a node: unspecified, loopback, multicast,
/// limited broadcast.
pub fn is_never_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4 == Ipv4Addr::BROADCAST
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_loopback() || v6.is_multicast(),
    }
}

#[cfg(test)]
mod tests;
