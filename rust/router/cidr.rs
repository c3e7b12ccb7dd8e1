//! Network ranges and the rule of which addresses in them may name a node.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address with its host bits cleared, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a network range is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The text is not `address/prefix` (or a bare address).
    #[error("invalid network {0:?}: expected 'address/prefix'")]
    Syntax(String),
    /// The prefix is longer than the address family allows.
    #[error("prefix /{prefix} is too long for {addr}")]
    PrefixTooLong {
        /// The address given.
        addr: IpAddr,
        /// The prefix given.
        prefix: u8,
    },
}

impl Cidr {
    /// A network from any address inside it and a prefix length; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::PrefixTooLong { addr, prefix });
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Ok(Cidr { network, prefix })
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True if `ip` lies in this network (same family, same prefix bits).
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }

    /// The subnet broadcast address: IPv4 with a prefix below /31 only.
    #[inline]
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        match self.network {
            IpAddr::V4(n) if self.prefix < 31 => {
                Some(Ipv4Addr::from(u32::from(n) | !mask32(self.prefix)))
            }
            _ => None,
        }
    }

    /// Why `ip` (which lies in this network) cannot be given to a node, if it cannot.
    ///
    /// The rule matches Python's `ipaddress` `hosts()`: IPv4 below /31 reserves the network
    /// and broadcast addresses, IPv6 below /127 reserves the network (subnet-router
    /// anycast) address; /31, /32, /127 and /128 have no reserved addresses.
    pub fn reserved_reason(&self, ip: IpAddr) -> Option<&'static str> {
        if crate::wire::is_never_host(ip) {
            return Some("not a unicast host address");
        }
        let small = if ip.is_ipv4() { 31 } else { 127 };
        if self.prefix < small && ip == self.network {
            return Some("the network address");
        }
        if self.broadcast().is_some_and(|b| IpAddr::V4(b) == ip) {
            return Some("the broadcast address");
        }
        None
    }

    /// True if the two networks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = if self.prefix <= other.prefix {
            self
        } else {
            other
        };
        let longer = if std::ptr::eq(shorter, self) {
            other
        } else {
            self
        };
        shorter.contains(longer.network)
    }
}

#[inline]
fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

#[inline]
fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `address/prefix`; a bare address is a /32 (IPv4) or /128 (IPv6).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(s.chars().take(64).collect());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let a: IpAddr = a.parse().map_err(|_| syntax())?;
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(syntax());
                }
                (a, p.parse::<u8>().map_err(|_| syntax())?)
            }
            None => {
                let a: IpAddr = s.parse().map_err(|_| syntax())?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}
