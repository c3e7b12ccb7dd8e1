//! `golem_vpn.Identity` and `golem_vpn.NodeTransport`: PyO3 faces of
//! [`crate::identity::Identity`] and [`crate::datapath::UdpNode`].

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::convert::{self, host_port};
use super::errors::{ToPyErr, error};
use crate::datapath::{DatapathError, Inbound, UdpNode, UdpRelay};
use crate::identity::{Identity, recover_node_id};
use crate::router::{Cidr, Medium, Router, RouterConfig};
use crate::tunnel::{Config, DownReason, Event};

/// A node's secp256k1 identity. See the stub for the Python docs.
#[pyclass(name = "Identity", module = "golem_vpn._golem_vpn", frozen)]
pub struct PyIdentity {
    inner: Identity,
}

#[pymethods]
impl PyIdentity {
    #[staticmethod]
    fn generate() -> Self {
        PyIdentity {
            inner: Identity::generate(&mut rand_core::OsRng),
        }
    }

    #[staticmethod]
    fn from_secret(py: Python<'_>, secret: &[u8]) -> PyResult<Self> {
        let bytes: [u8; 32] = secret.try_into().map_err(|_| {
            error(
                py,
                "IdentityError",
                format!("a secret key is 32 bytes, got {}", secret.len()),
            )
        })?;
        Identity::from_secret_bytes(&bytes)
            .map(|inner| PyIdentity { inner })
            .map_err(|e| error(py, "IdentityError", e.to_string()))
    }

    fn secret_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.secret_bytes())
    }

    #[getter]
    fn node_id(&self) -> String {
        self.inner.node_id().to_string()
    }

    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.public_key_uncompressed())
    }

    fn sign<'py>(&self, py: Python<'py>, message: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.sign_recoverable(message))
    }

    #[staticmethod]
    fn recover_node_id(py: Python<'_>, message: &[u8], signature: &[u8]) -> PyResult<String> {
        let sig: [u8; 65] = signature.try_into().map_err(|_| {
            error(
                py,
                "IdentityError",
                format!("a signature is 65 bytes, got {}", signature.len()),
            )
        })?;
        recover_node_id(message, &sig)
            .map(|n| n.to_string())
            .map_err(|e| error(py, "IdentityError", e.to_string()))
    }

    fn __repr__(&self) -> String {
        format!("Identity(node_id='{}')", self.inner.node_id())
    }
}

/// A node's UDP transport: tunnel endpoint + routers + socket. See the stub.
#[pyclass(name = "NodeTransport", module = "golem_vpn._golem_vpn")]
pub struct PyNodeTransport {
    inner: UdpNode,
    /// `time` values from Python map to instants through this pair.
    base: (f64, Instant),
}

impl ToPyErr for DatapathError {
    fn to_py(&self, py: Python<'_>) -> PyErr {
        match self {
            DatapathError::Router(e) => e.to_py(py),
            DatapathError::UnknownNetwork(_) => error(py, "NetworkNotFound", self.to_string()),
            DatapathError::Io(e) => pyo3::exceptions::PyOSError::new_err(e.to_string()),
            _ => error(py, "TunnelError", self.to_string()),
        }
    }
}

type InboundTuple<'py> = (Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>);

impl PyNodeTransport {
    fn instant(&self, now: f64) -> Instant {
        self.base.1 + Duration::from_secs_f64((now - self.base.0).max(0.0))
    }

    fn inbound<'py>(py: Python<'py>, inbound: Inbound) -> PyResult<InboundTuple<'py>> {
        let frames = PyList::empty(py);
        for (network, frame) in inbound.frames {
            frames.append((network, PyBytes::new(py, &frame)))?;
        }
        let control = PyList::empty(py);
        for (peer, network, message) in inbound.control {
            control.append((peer.to_string(), network, PyBytes::new(py, &message)))?;
        }
        let events = PyList::empty(py);
        for event in inbound.events {
            let item = match event {
                Event::PeerUp { peer, addr } => ("up", peer.to_string(), format!("{addr}")),
                Event::PeerDown { peer, reason } => (
                    "down",
                    peer.to_string(),
                    match reason {
                        DownReason::HandshakeTimeout => "handshake_timeout",
                        DownReason::Expired => "expired",
                        DownReason::Disallowed => "disallowed",
                    }
                    .to_owned(),
                ),
                Event::Received { .. } => continue,
            };
            events.append(item)?;
        }
        Ok((frames, control, events))
    }
}

#[pymethods]
impl PyNodeTransport {
    #[new]
    #[pyo3(signature = (identity, host = "127.0.0.1", port = 0, *, now, keepalive = None, seed = None))]
    fn new(
        py: Python<'_>,
        identity: &PyIdentity,
        host: &str,
        port: u16,
        now: f64,
        keepalive: Option<f64>,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let addr = SocketAddr::new(convert::ip(py, host)?, port);
        let config = Config {
            persistent_keepalive: keepalive.map(Duration::from_secs_f64),
            ..Config::default()
        };
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
        let inner = UdpNode::bind(&identity.inner, addr, config, seed).map_err(|e| e.to_py(py))?;
        Ok(PyNodeTransport {
            inner,
            base: (now, Instant::now()),
        })
    }

    #[getter]
    fn node_id(&self) -> String {
        self.inner.node_id().to_string()
    }

    #[getter]
    fn local_addr(&self) -> PyResult<(String, u16)> {
        let a = self.inner.local_addr()?;
        Ok(host_port(a))
    }

    fn fileno(&self) -> i32 {
        self.inner.socket().as_raw_fd()
    }

    #[pyo3(signature = (network_id, cidrs, ips, *, ethernet = false, requestor = None))]
    fn add_network(
        &mut self,
        py: Python<'_>,
        network_id: String,
        cidrs: Vec<String>,
        ips: Vec<String>,
        ethernet: bool,
        requestor: Option<&str>,
    ) -> PyResult<()> {
        let cidrs = cidrs
            .iter()
            .map(|c| c.trim().parse::<Cidr>().map_err(|e| e.to_py(py)))
            .collect::<PyResult<Vec<_>>>()?;
        let local_ips = ips
            .iter()
            .map(|s| convert::ip(py, s))
            .collect::<PyResult<Vec<_>>>()?;
        let router = Router::new(RouterConfig {
            network_id,
            cidrs,
            local_node: self.inner.node_id(),
            local_ips,
            medium: if ethernet {
                Medium::Ethernet
            } else {
                Medium::Ip
            },
            requestor: requestor.map(|r| convert::node_id(py, r)).transpose()?,
        })
        .map_err(|e| e.to_py(py))?;
        self.inner.add_network(router);
        Ok(())
    }

    fn remove_network(&mut self, network_id: &str) -> bool {
        self.inner.remove_network(network_id)
    }

    #[pyo3(signature = (network_id, node_id, ip, addr = None))]
    fn add_peer(
        &mut self,
        py: Python<'_>,
        network_id: &str,
        node_id: &str,
        ip: &str,
        addr: Option<(String, u16)>,
    ) -> PyResult<bool> {
        let addr = addr.map(|a| convert::socket_addr(py, &a)).transpose()?;
        let n = convert::node_id(py, node_id)?;
        let ip = convert::ip(py, ip)?;
        self.inner
            .add_peer(network_id, n, ip, addr)
            .map_err(|e| e.to_py(py))
    }

    fn remove_peer(&mut self, py: Python<'_>, network_id: &str, node_id: &str) -> PyResult<bool> {
        let n = convert::node_id(py, node_id)?;
        self.inner
            .remove_peer(network_id, &n)
            .map_err(|e| e.to_py(py))
    }

    fn set_peer_address(
        &mut self,
        py: Python<'_>,
        node_id: &str,
        addr: (String, u16),
    ) -> PyResult<()> {
        let n = convert::node_id(py, node_id)?;
        self.inner
            .set_peer_address(n, convert::socket_addr(py, &addr)?);
        Ok(())
    }

    fn send_packets<'py>(
        &mut self,
        py: Python<'py>,
        network_id: &str,
        packets: Vec<Bound<'py, PyBytes>>,
        now: f64,
    ) -> PyResult<Bound<'py, PyList>> {
        let now = self.instant(now);
        let answers = self
            .inner
            .send_packets(network_id, packets.iter().map(|p| p.as_bytes()), now)
            .map_err(|e| e.to_py(py))?;
        PyList::new(py, answers.iter().map(|a| PyBytes::new(py, a)))
    }

    fn send_control(
        &mut self,
        py: Python<'_>,
        node_id: &str,
        network_id: &str,
        message: &[u8],
        now: f64,
    ) -> PyResult<()> {
        let n = convert::node_id(py, node_id)?;
        let now = self.instant(now);
        self.inner
            .send_control(&n, network_id, message, now)
            .map_err(|e| e.to_py(py))
    }

    #[pyo3(signature = (now, max = 1024))]
    fn receive<'py>(
        &mut self,
        py: Python<'py>,
        now: f64,
        max: usize,
    ) -> PyResult<InboundTuple<'py>> {
        let now = self.instant(now);
        let mut inbound = Inbound::default();
        self.inner.receive(now, max, &mut inbound);
        Self::inbound(py, inbound)
    }

    fn handle_timeout<'py>(&mut self, py: Python<'py>, now: f64) -> PyResult<InboundTuple<'py>> {
        let now = self.instant(now);
        let mut inbound = Inbound::default();
        self.inner.handle_timeout(now, &mut inbound);
        Self::inbound(py, inbound)
    }

    fn poll_at(&self) -> Option<f64> {
        self.inner
            .poll_at()
            .map(|t| self.base.0 + t.saturating_duration_since(self.base.1).as_secs_f64())
    }

    #[pyo3(signature = (addr, now))]
    fn set_relay(&mut self, py: Python<'_>, addr: Option<(String, u16)>, now: f64) -> PyResult<()> {
        let addr = addr.map(|a| convert::socket_addr(py, &a)).transpose()?;
        let now = self.instant(now);
        self.inner.set_relay(addr, now);
        Ok(())
    }

    fn set_relays(&mut self, py: Python<'_>, relays: Vec<(String, u16)>, now: f64) -> PyResult<()> {
        let relays = relays
            .iter()
            .map(|a| convert::socket_addr(py, a))
            .collect::<PyResult<Vec<_>>>()?;
        let now = self.instant(now);
        self.inner.set_relays(relays, now);
        Ok(())
    }

    #[getter]
    fn relay(&self) -> Option<(String, u16)> {
        self.inner.relay().map(host_port)
    }

    fn set_hole_punching(&mut self, enabled: bool) {
        self.inner.set_hole_punching(enabled);
    }

    #[getter]
    fn public_addr(&self) -> Option<(String, u16)> {
        self.inner.public_addr().map(host_port)
    }

    fn is_relayed(&self, py: Python<'_>, node_id: &str) -> PyResult<bool> {
        Ok(self.inner.is_relayed(&convert::node_id(py, node_id)?))
    }

    fn peer_address(&self, py: Python<'_>, node_id: &str) -> PyResult<Option<(String, u16)>> {
        Ok(self
            .inner
            .endpoint()
            .peer_address(&convert::node_id(py, node_id)?)
            .map(host_port))
    }

    fn is_up(&self, py: Python<'_>, node_id: &str) -> PyResult<bool> {
        Ok(self.inner.endpoint().is_up(&convert::node_id(py, node_id)?))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let s = self.inner.stats();
        d.set_item("datagrams_in", s.datagrams_in)?;
        d.set_item("datagrams_out", s.datagrams_out)?;
        d.set_item("send_errors", s.send_errors)?;
        d.set_item("unknown_network", s.unknown_network)?;
        d.set_item("router_drops", s.router_drops)?;
        d.set_item("relayed_out", s.relayed_out)?;
        d.set_item("relayed_in", s.relayed_in)?;
        d.set_item("relay_drops", s.relay_drops)?;
        d.set_item("relay_unknown_peer", s.relay_unknown_peer)?;
        d.set_item("probes_sent", s.probes_sent)?;
        d.set_item("punched", s.punched)?;
        let t = self.inner.tunnel_stats();
        let tunnel = PyDict::new(py);
        tunnel.set_item("handshakes_started", t.handshakes_started)?;
        tunnel.set_item("handshakes_completed", t.handshakes_completed)?;
        tunnel.set_item("handshakes_failed", t.handshakes_failed)?;
        tunnel.set_item("packets_in", t.packets_in)?;
        tunnel.set_item("bytes_in", t.bytes_in)?;
        tunnel.set_item("packets_out", t.packets_out)?;
        tunnel.set_item("bytes_out", t.bytes_out)?;
        let drops = PyDict::new(py);
        for (reason, n) in t.drops.iter() {
            drops.set_item(reason.name(), n)?;
        }
        tunnel.set_item("drops", drops)?;
        d.set_item("tunnel", tunnel)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "NodeTransport(node_id='{}', local_addr={:?})",
            self.inner.node_id(),
            self.inner.local_addr().ok()
        )
    }
}

/// A relay on a UDP socket. See the stub.
#[pyclass(name = "Relay", module = "golem_vpn._golem_vpn")]
pub struct PyRelay {
    inner: UdpRelay,
}

#[pymethods]
impl PyRelay {
    #[new]
    #[pyo3(signature = (host = "0.0.0.0", port = 7464))]
    fn new(py: Python<'_>, host: &str, port: u16) -> PyResult<Self> {
        let addr = SocketAddr::new(convert::ip(py, host)?, port);
        Ok(PyRelay {
            inner: UdpRelay::bind(addr)?,
        })
    }

    #[getter]
    fn local_addr(&self) -> PyResult<(String, u16)> {
        let a = self.inner.local_addr()?;
        Ok(host_port(a))
    }

    fn fileno(&self) -> i32 {
        self.inner.socket().as_raw_fd()
    }

    #[pyo3(signature = (max = 4096))]
    fn process(&mut self, max: usize) -> usize {
        self.inner.process(Instant::now(), max)
    }

    fn expire(&mut self) {
        self.inner.expire(Instant::now());
    }

    fn registrations(&self) -> usize {
        self.inner.registrations()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("registered", s.registered)?;
        d.set_item("bad_registrations", s.bad_registrations)?;
        d.set_item("forwarded", s.forwarded)?;
        d.set_item("forwarded_bytes", s.forwarded_bytes)?;
        d.set_item("unregistered_sender", s.unregistered_sender)?;
        d.set_item("unknown_destination", s.unknown_destination)?;
        d.set_item("malformed", s.malformed)?;
        d.set_item("lookups", s.lookups)?;
        d.set_item("send_errors", self.inner.send_errors())?;
        d.set_item("registrations", self.inner.registrations())?;
        Ok(d)
    }
}
