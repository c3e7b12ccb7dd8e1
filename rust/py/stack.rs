//! `golem_vpn.Stack`: the PyO3 face of [`crate::stack::Stack`].

use std::net::SocketAddr;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use smoltcp::time::{Duration, Instant};

use super::convert::{self, host_port};
use super::errors::{ToPyErr, error};
use crate::stack::{SocketId, Stack, StackConfig, TcpFailure};

/// A userspace TCP/IP stack. See `golem_vpn/_golem_vpn.pyi` for the Python docs.
#[pyclass(name = "Stack", module = "golem_vpn._golem_vpn")]
pub struct PyStack {
    inner: Stack,
}

/// A TCP connection's state (see `TcpStatus` in the stub).
#[pyclass(name = "TcpStatus", module = "golem_vpn._golem_vpn", frozen, get_all)]
pub struct PyTcpStatus {
    state: &'static str,
    established: bool,
    recv_queue: usize,
    may_recv: bool,
    send_queue: usize,
    send_free: usize,
    may_send: bool,
    failure: Option<&'static str>,
    local: Option<(String, u16)>,
    remote: Option<(String, u16)>,
}

#[pymethods]
impl PyTcpStatus {
    fn __repr__(&self) -> String {
        format!(
            "TcpStatus(state={:?}, recv_queue={}, may_recv={}, send_queue={}, may_send={}, failure={:?})",
            self.state,
            self.recv_queue,
            self.may_recv,
            self.send_queue,
            self.may_send,
            self.failure
        )
    }
}

/// A datagram and its sender's `(host, port)`.
type Received<'py> = (Bound<'py, PyBytes>, (String, u16));

fn instant(now: f64) -> Instant {
    Instant::from_micros((now * 1e6).round() as i64)
}

fn seconds(t: Instant) -> f64 {
    t.total_micros() as f64 / 1e6
}

fn duration(secs: Option<f64>) -> Option<Duration> {
    secs.map(|s| Duration::from_micros((s.max(0.0) * 1e6) as u64))
}

impl PyStack {
    fn err<T>(py: Python<'_>, r: Result<T, crate::stack::StackError>) -> PyResult<T> {
        r.map_err(|e| e.to_py(py))
    }
}

#[pymethods]
impl PyStack {
    #[new]
    #[pyo3(signature = (
        addresses, *, mtu = 1400, tcp_rx_buffer = 512 * 1024, tcp_tx_buffer = 512 * 1024,
        udp_buffer = 256 * 1024, keep_alive = Some(30.0), tcp_timeout = Some(120.0), seed = None,
        now = 0.0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        addresses: &Bound<'_, PyAny>,
        mtu: usize,
        tcp_rx_buffer: usize,
        tcp_tx_buffer: usize,
        udp_buffer: usize,
        keep_alive: Option<f64>,
        tcp_timeout: Option<f64>,
        seed: Option<u64>,
        now: f64,
    ) -> PyResult<Self> {
        let texts: Vec<String> = if let Ok(s) = addresses.cast::<PyString>() {
            vec![s.to_str()?.to_owned()]
        } else {
            addresses
                .try_iter()?
                .map(|i| Ok(i?.str()?.to_str()?.to_owned()))
                .collect::<PyResult<_>>()?
        };
        let mut parsed = Vec::new();
        for text in &texts {
            let (ip, prefix) = match text.split_once('/') {
                Some((ip, p)) => (ip, p.parse::<u8>().ok()),
                None => (text.as_str(), None),
            };
            let ip = convert::ip(py, ip)?;
            let prefix = match prefix {
                Some(p) => p,
                None if text.contains('/') => {
                    return Err(error(
                        py,
                        "AddressError",
                        format!("invalid prefix in {text:?}"),
                    ));
                }
                None if ip.is_ipv4() => 24,
                None => 64,
            };
            parsed.push((ip, prefix));
        }
        let config = StackConfig {
            addresses: parsed,
            mtu,
            tcp_rx_buffer,
            tcp_tx_buffer,
            udp_buffer,
            keep_alive: duration(keep_alive),
            tcp_timeout: duration(tcp_timeout),
            random_seed: seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0x5eed, |d| d.as_nanos() as u64)
            }),
        };
        let inner = Self::err(py, Stack::new(config, instant(now)))?;
        Ok(PyStack { inner })
    }

    #[getter]
    fn addresses(&self) -> Vec<String> {
        self.inner
            .config()
            .addresses
            .iter()
            .map(|(ip, p)| format!("{ip}/{p}"))
            .collect()
    }

    #[getter]
    fn mtu(&self) -> usize {
        self.inner.config().mtu
    }

    fn receive(&mut self, packet: &[u8]) -> bool {
        self.inner.receive(packet)
    }

    fn receive_many(&mut self, packets: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut n = 0;
        for item in packets.try_iter()? {
            let item = item?;
            let packet = item.cast::<PyBytes>()?;
            n += usize::from(self.inner.receive(packet.as_bytes()));
        }
        Ok(n)
    }

    #[pyo3(signature = (now, budget = 4096))]
    fn poll<'py>(
        &mut self,
        py: Python<'py>,
        now: f64,
        budget: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = self.inner.poll(instant(now), budget.max(1));
        PyList::new(py, out.iter().map(|p| PyBytes::new(py, p)))
    }

    fn poll_at(&mut self, now: f64) -> Option<f64> {
        self.inner.poll_at(instant(now)).map(seconds)
    }

    fn take_ready(&mut self) -> Vec<SocketId> {
        self.inner.take_ready()
    }

    fn tcp_connect(&mut self, py: Python<'_>, host: &str, port: u16) -> PyResult<SocketId> {
        let ip = convert::ip(py, host)?;
        Self::err(py, self.inner.tcp_connect(SocketAddr::new(ip, port)))
    }

    #[pyo3(signature = (port, backlog = 128))]
    fn tcp_listen(
        &mut self,
        py: Python<'_>,
        port: u16,
        backlog: usize,
    ) -> PyResult<(SocketId, u16)> {
        Self::err(py, self.inner.tcp_listen(port, backlog))
    }

    fn tcp_accept(&mut self, py: Python<'_>, listener: SocketId) -> PyResult<Option<SocketId>> {
        Self::err(py, self.inner.tcp_accept(listener))
    }

    fn tcp_status(&self, py: Python<'_>, id: SocketId) -> PyResult<PyTcpStatus> {
        let s = Self::err(py, self.inner.tcp_status(id))?;
        Ok(PyTcpStatus {
            state: s.state,
            established: s.established,
            recv_queue: s.recv_queue,
            may_recv: s.may_recv,
            send_queue: s.send_queue,
            send_free: s.send_free,
            may_send: s.may_send,
            failure: s.failure.map(|f| match f {
                TcpFailure::Refused => "refused",
                TcpFailure::Reset => "reset",
                TcpFailure::TimedOut => "timed_out",
            }),
            local: s.local.map(host_port),
            remote: s.remote.map(host_port),
        })
    }

    fn tcp_send(&mut self, py: Python<'_>, id: SocketId, data: &[u8]) -> PyResult<usize> {
        Self::err(py, self.inner.tcp_send(id, data))
    }

    #[pyo3(signature = (id, max = 262144))]
    fn tcp_recv<'py>(
        &mut self,
        py: Python<'py>,
        id: SocketId,
        max: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let waiting = Self::err(py, self.inner.tcp_status(id))?
            .recv_queue
            .min(max);
        let inner = &mut self.inner;
        let mut failure = None;
        let bytes = PyBytes::new_with(py, waiting, |buf| {
            match inner.tcp_recv(id, buf) {
                Ok(n) => debug_assert_eq!(n, buf.len()),
                Err(e) => failure = Some(e),
            }
            Ok(())
        })?;
        match failure {
            Some(e) => Err(e.to_py(py)),
            None => Ok(bytes),
        }
    }

    fn tcp_shutdown(&mut self, py: Python<'_>, id: SocketId) -> PyResult<()> {
        Self::err(py, self.inner.tcp_shutdown(id))
    }

    fn tcp_abort(&mut self, py: Python<'_>, id: SocketId) -> PyResult<()> {
        Self::err(py, self.inner.tcp_abort(id))
    }

    fn release(&mut self, py: Python<'_>, id: SocketId) -> PyResult<()> {
        Self::err(py, self.inner.release(id))
    }

    #[pyo3(signature = (port = 0))]
    fn udp_bind(&mut self, py: Python<'_>, port: u16) -> PyResult<(SocketId, u16)> {
        Self::err(py, self.inner.udp_bind(port))
    }

    fn udp_send_to(
        &mut self,
        py: Python<'_>,
        id: SocketId,
        data: &[u8],
        addr: (String, u16),
    ) -> PyResult<()> {
        let ip = convert::ip(py, &addr.0)?;
        Self::err(
            py,
            self.inner
                .udp_send_to(id, data, SocketAddr::new(ip, addr.1)),
        )
    }

    fn udp_recv_from<'py>(
        &mut self,
        py: Python<'py>,
        id: SocketId,
    ) -> PyResult<Option<Received<'py>>> {
        let got = Self::err(py, self.inner.udp_recv_from(id))?;
        Ok(got.map(|d| (PyBytes::new(py, &d.data), host_port(d.src))))
    }

    fn max_datagram(&self, py: Python<'_>, host: &str) -> PyResult<usize> {
        Ok(self.inner.max_datagram(convert::ip(py, host)?))
    }

    fn icmp_open(&mut self, py: Python<'_>) -> PyResult<SocketId> {
        Self::err(py, self.inner.icmp_open())
    }

    fn ping_send(
        &mut self,
        py: Python<'_>,
        id: SocketId,
        host: &str,
        seq: u16,
        payload: &[u8],
    ) -> PyResult<()> {
        let ip = convert::ip(py, host)?;
        Self::err(py, self.inner.ping_send(id, ip, seq, payload))
    }

    fn ping_recv<'py>(
        &mut self,
        py: Python<'py>,
        id: SocketId,
    ) -> PyResult<Option<(String, u16, Bound<'py, PyBytes>)>> {
        let got = Self::err(py, self.inner.ping_recv(id))?;
        Ok(got.map(|(ip, seq, data)| (ip.to_string(), seq, PyBytes::new(py, &data))))
    }

    fn socket_count(&self) -> usize {
        self.inner.socket_count()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("packets_in", s.packets_in)?;
        d.set_item("bytes_in", s.bytes_in)?;
        d.set_item("packets_out", s.packets_out)?;
        d.set_item("bytes_out", s.bytes_out)?;
        d.set_item("dropped_in", s.dropped_in)?;
        d.set_item("syn_dropped", s.syn_dropped)?;
        d.set_item("sockets", self.inner.socket_count())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Stack(addresses={:?}, mtu={}, sockets={})",
            self.addresses(),
            self.inner.config().mtu,
            self.inner.socket_count()
        )
    }
}
