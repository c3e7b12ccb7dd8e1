//! `golem_vpn.Identity` and `golem_vpn.NodeTransport`: PyO3 faces of
//! [`crate::identity::Identity`] and [`crate::datapath::UdpNode`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::convert::{self, host_port};
use super::errors::{ToPyErr, error};
use crate::datapath::{
    AttachError, Attachment, DatapathError, Inbound, UdpNode, UdpRelay, Worker, WorkerError,
    default_tun_queues,
};
use crate::identity::{Identity, recover_node_id};
use crate::router::{Cidr, Medium, Router, RouterConfig};
use crate::tunnel::{Config, DownReason, Event, LANES};

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

/// A node's UDP transport: tunnel endpoint + routers + socket, driven by the native
/// datapath thread ([`Worker`]). See the stub.
#[pyclass(name = "NodeTransport", module = "golem_vpn._golem_vpn")]
pub struct PyNodeTransport {
    worker: Worker,
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

impl ToPyErr for WorkerError {
    fn to_py(&self, py: Python<'_>) -> PyErr {
        match self {
            WorkerError::UnknownNetwork(_) => error(py, "NetworkNotFound", self.to_string()),
            WorkerError::AlreadyAttached { .. } => error(py, "AttachError", self.to_string()),
            WorkerError::NoNetwork => pyo3::exceptions::PyValueError::new_err(self.to_string()),
            WorkerError::Attach(AttachError::BadUrl(_)) => {
                pyo3::exceptions::PyValueError::new_err(self.to_string())
            }
            WorkerError::Attach(e) => {
                let message = self.to_string();
                let errno = e.io_error().and_then(io::Error::raw_os_error).unwrap_or(0);
                // OSError(errno, message) picks the builtin subclass (PermissionError,
                // ConnectionRefusedError, TimeoutError...) from the errno.
                match e.io_error().map(io::Error::kind) {
                    Some(io::ErrorKind::TimedOut) => {
                        pyo3::exceptions::PyTimeoutError::new_err(message)
                    }
                    _ => pyo3::exceptions::PyOSError::new_err((errno, message)),
                }
            }
        }
    }
}

type InboundTuple<'py> = (Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>);

fn inbound_tuple<'py>(py: Python<'py>, inbound: Inbound) -> PyResult<InboundTuple<'py>> {
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

fn attachment_dict<'py>(
    py: Python<'py>,
    a: &Attachment,
    threads: Vec<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let s = a.stats;
    d.set_item("id", a.id())?;
    d.set_item("kind", a.kind().name())?;
    d.set_item("name", a.name())?;
    d.set_item("networks", a.networks().to_vec())?;
    d.set_item("packets_in", s.packets_in)?;
    d.set_item("bytes_in", s.bytes_in)?;
    d.set_item("packets_out", s.packets_out)?;
    d.set_item("bytes_out", s.bytes_out)?;
    d.set_item("drops", s.drops())?;
    let reasons = PyDict::new(py);
    reasons.set_item("no_network", s.no_network)?;
    reasons.set_item("router", s.router_drops)?;
    reasons.set_item("write", s.write_drops)?;
    reasons.set_item("framing", s.framing_errors)?;
    d.set_item("drop_reasons", reasons)?;
    d.set_item("broken", a.is_broken())?;
    d.set_item("offload", a.offload())?;
    d.set_item("queues", a.queue_count())?;
    d.set_item("threads", threads)?;
    Ok(d)
}

#[pymethods]
impl PyNodeTransport {
    #[new]
    #[pyo3(signature = (identity, host = "127.0.0.1", port = 0, *, keepalive = None, seed = None, lanes = None))]
    fn new(
        py: Python<'_>,
        identity: &PyIdentity,
        host: &str,
        port: u16,
        keepalive: Option<f64>,
        seed: Option<u64>,
        lanes: Option<usize>,
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
        let lanes = lanes.unwrap_or_else(default_tun_queues);
        if !(1..=LANES).contains(&lanes) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "lanes must be from 1 to {LANES}, got {lanes}"
            )));
        }
        let node = UdpNode::bind_lanes(&identity.inner, addr, config, seed, lanes)
            .map_err(|e| e.to_py(py))?;
        Ok(PyNodeTransport {
            worker: Worker::start(node)?,
        })
    }

    #[getter]
    fn node_id(&self) -> String {
        self.worker.read(|s| s.node().node_id().to_string())
    }

    #[getter]
    fn local_addr(&self) -> PyResult<(String, u16)> {
        let a = self.worker.read(|s| s.node().local_addr())?;
        Ok(host_port(a))
    }

    fn fileno(&self) -> i32 {
        self.worker.notify_fd()
    }

    #[pyo3(signature = (network_id, cidrs, ips, *, ethernet = false, requestor = None))]
    fn add_network(
        &self,
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
        let requestor = requestor.map(|r| convert::node_id(py, r)).transpose()?;
        let local_node = self.worker.read(|s| s.node().node_id());
        let router = Router::new(RouterConfig {
            network_id,
            cidrs,
            local_node,
            local_ips,
            medium: if ethernet {
                Medium::Ethernet
            } else {
                Medium::Ip
            },
            requestor,
        })
        .map_err(|e| e.to_py(py))?;
        self.worker.with(|s| s.node_mut().add_network(router));
        Ok(())
    }

    fn remove_network(&self, network_id: &str) -> bool {
        self.worker.with(|s| s.remove_network(network_id))
    }

    #[pyo3(signature = (network_id, node_id, ip, addr = None))]
    fn add_peer(
        &self,
        py: Python<'_>,
        network_id: &str,
        node_id: &str,
        ip: &str,
        addr: Option<(String, u16)>,
    ) -> PyResult<bool> {
        let addr = addr.map(|a| convert::socket_addr(py, &a)).transpose()?;
        let n = convert::node_id(py, node_id)?;
        let ip = convert::ip(py, ip)?;
        self.worker
            .with(|s| s.node_mut().add_peer(network_id, n, ip, addr))
            .map_err(|e| e.to_py(py))
    }

    fn remove_peer(&self, py: Python<'_>, network_id: &str, node_id: &str) -> PyResult<bool> {
        let n = convert::node_id(py, node_id)?;
        self.worker
            .with(|s| s.node_mut().remove_peer(network_id, &n))
            .map_err(|e| e.to_py(py))
    }

    fn readdress(
        &self,
        py: Python<'_>,
        network_id: &str,
        node_id: &str,
        ips: Vec<String>,
    ) -> PyResult<bool> {
        let n = convert::node_id(py, node_id)?;
        let ips = ips
            .iter()
            .map(|s| convert::ip(py, s))
            .collect::<PyResult<Vec<_>>>()?;
        self.worker
            .with(|s| s.node_mut().readdress(network_id, &n, &ips))
            .map_err(|e| e.to_py(py))
    }

    fn set_peer_address(&self, py: Python<'_>, node_id: &str, addr: (String, u16)) -> PyResult<()> {
        let n = convert::node_id(py, node_id)?;
        let addr = convert::socket_addr(py, &addr)?;
        self.worker.with(|s| s.node_mut().set_peer_address(n, addr));
        Ok(())
    }

    fn send_packets<'py>(
        &self,
        py: Python<'py>,
        network_id: &str,
        packets: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let answers = self
            .worker
            .with(|s| {
                s.node_mut().send_packets(
                    network_id,
                    packets.iter().map(|p| p.as_bytes()),
                    Instant::now(),
                )
            })
            .map_err(|e| e.to_py(py))?;
        PyList::new(py, answers.iter().map(|a| PyBytes::new(py, a)))
    }

    fn send_control(
        &self,
        py: Python<'_>,
        node_id: &str,
        network_id: &str,
        message: &[u8],
    ) -> PyResult<()> {
        let n = convert::node_id(py, node_id)?;
        self.worker
            .with(|s| {
                s.node_mut()
                    .send_control(&n, network_id, message, Instant::now())
            })
            .map_err(|e| e.to_py(py))
    }

    /// What the datapath thread queued for Python.
    fn receive<'py>(&self, py: Python<'py>) -> PyResult<InboundTuple<'py>> {
        inbound_tuple(py, self.worker.take_inbound())
    }

    #[pyo3(signature = (addr))]
    fn set_relay(&self, py: Python<'_>, addr: Option<(String, u16)>) -> PyResult<()> {
        let addr = addr.map(|a| convert::socket_addr(py, &a)).transpose()?;
        self.worker
            .with(|s| s.node_mut().set_relay(addr, Instant::now()));
        Ok(())
    }

    fn set_relays(&self, py: Python<'_>, relays: Vec<(String, u16)>) -> PyResult<()> {
        let relays = relays
            .iter()
            .map(|a| convert::socket_addr(py, a))
            .collect::<PyResult<Vec<_>>>()?;
        self.worker
            .with(|s| s.node_mut().set_relays(relays, Instant::now()));
        Ok(())
    }

    #[getter]
    fn relay(&self) -> Option<(String, u16)> {
        self.worker.read(|s| s.node().relay().map(host_port))
    }

    fn set_hole_punching(&self, enabled: bool) {
        self.worker
            .with(|s| s.node_mut().set_hole_punching(enabled));
    }

    #[getter]
    fn public_addr(&self) -> Option<(String, u16)> {
        self.worker.read(|s| s.node().public_addr().map(host_port))
    }

    fn is_relayed(&self, py: Python<'_>, node_id: &str) -> PyResult<bool> {
        let n = convert::node_id(py, node_id)?;
        Ok(self.worker.read(|s| s.node().is_relayed(&n)))
    }

    fn peer_address(&self, py: Python<'_>, node_id: &str) -> PyResult<Option<(String, u16)>> {
        let n = convert::node_id(py, node_id)?;
        Ok(self
            .worker
            .read(|s| s.node().endpoint().peer_address(&n).map(host_port)))
    }

    fn is_up(&self, py: Python<'_>, node_id: &str) -> PyResult<bool> {
        let n = convert::node_id(py, node_id)?;
        Ok(self.worker.read(|s| s.node().endpoint().is_up(&n)))
    }

    #[pyo3(signature = (name, networks, *, offload = true, queues = None))]
    fn attach_tun(
        &self,
        py: Python<'_>,
        name: &str,
        networks: Vec<String>,
        offload: bool,
        queues: Option<usize>,
    ) -> PyResult<u32> {
        let queues = queues.unwrap_or_else(default_tun_queues);
        self.worker
            .attach_tun(name, networks, offload, queues)
            .map_err(|e| e.to_py(py))
    }

    fn attach_vm(
        &self,
        py: Python<'_>,
        url: &str,
        networks: Vec<String>,
    ) -> PyResult<(u32, String)> {
        // Connecting may wait (tcp-connect): let other Python threads run meanwhile.
        let made = py.detach(|| Attachment::vm(0, url, Vec::new()));
        let made = made.map_err(|e| WorkerError::from(e).to_py(py))?;
        let endpoint = made.name().to_owned();
        let id = self
            .worker
            .with(|s| s.attach(networks, move |id, nets| Ok(made.renumbered(id, nets))))
            .map_err(|e| e.to_py(py))?;
        Ok((id, endpoint))
    }

    fn detach(&self, attachment: u32) -> bool {
        self.worker.detach(attachment)
    }

    fn attachments<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        let mut ids: Vec<u32> = self
            .worker
            .read(|s| s.attachments().map(Attachment::id).collect());
        ids.sort_unstable();
        for id in ids {
            let d = self.worker.read(|s| {
                s.attachment(id)
                    .map(|a| attachment_dict(py, a, s.tx_packets(id)))
            });
            if let Some(d) = d {
                list.append(d?)?;
            }
        }
        Ok(list)
    }

    fn close(&mut self) {
        self.worker.stop();
    }

    #[getter]
    fn running(&self) -> bool {
        self.worker.is_running()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (s, t) = self
            .worker
            .read(|st| (st.node().stats(), st.node().tunnel_stats()));
        let d = PyDict::new(py);
        d.set_item("datagrams_in", s.datagrams_in)?;
        d.set_item("datagrams_out", s.datagrams_out)?;
        d.set_item("send_errors", s.send_errors)?;
        d.set_item("unknown_network", s.unknown_network)?;
        d.set_item("router_drops", s.router_drops)?;
        d.set_item("relayed_out", s.relayed_out)?;
        d.set_item("relayed_in", s.relayed_in)?;
        d.set_item("relay_drops", s.relay_drops)?;
        d.set_item("relay_unknown_peer", s.relay_unknown_peer)?;
        d.set_item("relay_register_again", s.relay_register_again)?;
        d.set_item("relay_strangers_evicted", s.relay_strangers_evicted)?;
        d.set_item("probes_sent", s.probes_sent)?;
        d.set_item("punched", s.punched)?;
        let lanes = self.worker.lane_datagrams();
        d.set_item("lanes", 1 + lanes.len())?;
        d.set_item("lane_datagrams", lanes)?;
        let tunnel = PyDict::new(py);
        tunnel.set_item("handshakes_started", t.handshakes_started)?;
        tunnel.set_item("handshakes_completed", t.handshakes_completed)?;
        tunnel.set_item("handshakes_failed", t.handshakes_failed)?;
        tunnel.set_item("cookies_received", t.cookies_received)?;
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
        self.worker.read(|s| {
            format!(
                "NodeTransport(node_id='{}', local_addr={:?})",
                s.node().node_id(),
                s.node().local_addr().ok()
            )
        })
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
