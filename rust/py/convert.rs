//! Conversions between Python values and the core's types, shared by every binding.

use std::net::{IpAddr, SocketAddr};

use pyo3::prelude::*;

use super::errors::{ToPyErr, error};
use crate::node_id::NodeId;

/// A node id from its `0x…` text.
pub(crate) fn node_id(py: Python<'_>, s: &str) -> PyResult<NodeId> {
    s.parse::<NodeId>().map_err(|e| e.to_py(py))
}

/// An IP address from text (surrounding white space ignored).
pub(crate) fn ip(py: Python<'_>, text: &str) -> PyResult<IpAddr> {
    text.trim().parse::<IpAddr>().map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        error(py, "AddressError", format!("invalid IP address {shown:?}"))
    })
}

/// An IP address from any object whose `str()` is one (text, `ipaddress` objects).
pub(crate) fn ip_of(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<IpAddr> {
    let text = obj.str()?;
    ip(py, text.to_str()?)
}

/// A socket address from a Python `(host, port)` pair.
pub(crate) fn socket_addr(py: Python<'_>, addr: &(String, u16)) -> PyResult<SocketAddr> {
    Ok(SocketAddr::new(ip(py, &addr.0)?, addr.1))
}

/// A socket address as a Python `(host, port)` pair.
pub(crate) fn host_port(addr: SocketAddr) -> (String, u16) {
    (addr.ip().to_string(), addr.port())
}
