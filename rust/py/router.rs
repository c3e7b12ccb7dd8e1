//! `golem_vpn.Router`: the PyO3 face of [`crate::router::Router`].

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use rustc_hash::FxHashMap;

use super::convert;
use super::errors::ToPyErr;
use crate::node_id::NodeId;
use crate::router::{Cidr, Counters, Frame, Medium, Router, RouterConfig};

/// One node's view of one network. See `golem_vpn/_golem_vpn.pyi` for the Python docs.
#[pyclass(name = "Router", module = "golem_vpn._golem_vpn")]
pub struct PyRouter {
    inner: Router,
    /// Interned node-id strings, so deliveries do not build a new `str` per packet.
    names: FxHashMap<NodeId, Py<PyString>>,
}

/// True for one address or network: a `str`, or an `ipaddress` object (networks are
/// iterable, but here they mean one range).
fn is_single(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.is_instance_of::<PyString>()
        || obj.hasattr("packed")?
        || obj.hasattr("with_prefixlen")?)
}

/// `str(obj)` for one address or network, or for each item of an iterable of them.
fn strings(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if is_single(obj)? {
        return Ok(vec![obj.str()?.to_str()?.to_owned()]);
    }
    obj.try_iter()?
        .map(|item| item.and_then(|i| Ok(i.str()?.to_str()?.to_owned())))
        .collect()
}

fn counters_dict<'py>(py: Python<'py>, c: &Counters) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("packets_in", c.packets_in)?;
    d.set_item("bytes_in", c.bytes_in)?;
    d.set_item("packets_out", c.packets_out)?;
    d.set_item("bytes_out", c.bytes_out)?;
    Ok(d)
}

/// The `bytes` for a routed packet: the caller's own object when the packet is all of
/// it (no copy), a new `bytes` otherwise.
fn packet_bytes<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyBytes>,
    packet: &[u8],
) -> Bound<'py, PyBytes> {
    let whole = input.as_bytes();
    if packet.as_ptr() == whole.as_ptr() && packet.len() == whole.len() {
        input.clone()
    } else {
        PyBytes::new(py, packet)
    }
}

fn frame_bytes<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyBytes>,
    frame: &Frame<'_>,
) -> PyResult<Bound<'py, PyBytes>> {
    if frame.header.is_none() {
        return Ok(packet_bytes(py, input, frame.packet));
    }
    PyBytes::new_with(py, frame.len(), |buf| {
        frame.write_to(buf);
        Ok(())
    })
}

impl PyRouter {
    fn name<'py>(
        names: &mut FxHashMap<NodeId, Py<PyString>>,
        py: Python<'py>,
        id: &NodeId,
    ) -> Bound<'py, PyString> {
        names
            .entry(*id)
            .or_insert_with(|| PyString::intern(py, &id.to_string()).unbind())
            .bind(py)
            .clone()
    }

    /// Routes one packet, appending `(node_id, packet)` tuples to `out`.
    fn inject_into<'py>(
        &mut self,
        py: Python<'py>,
        packet: &Bound<'py, PyBytes>,
        out: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let PyRouter { inner, names } = self;
        let mut failed: Option<PyErr> = None;
        let _ = inner.inject(packet.as_bytes(), |node, bytes| {
            if failed.is_some() {
                return;
            }
            let item = PyTuple::new(
                py,
                [
                    Self::name(names, py, node).into_any(),
                    packet_bytes(py, packet, bytes).into_any(),
                ],
            )
            .and_then(|t| out.append(t));
            if let Err(e) = item {
                failed = Some(e);
            }
        });
        failed.map_or(Ok(()), Err)
    }
}

#[pymethods]
impl PyRouter {
    #[new]
    #[pyo3(signature = (network_id, cidrs, node_id, ips, *, ethernet = false, requestor = None))]
    fn new(
        py: Python<'_>,
        network_id: String,
        cidrs: &Bound<'_, PyAny>,
        node_id: &str,
        ips: &Bound<'_, PyAny>,
        ethernet: bool,
        requestor: Option<&str>,
    ) -> PyResult<Self> {
        let cidrs = strings(cidrs)?
            .iter()
            .map(|s| s.trim().parse::<Cidr>().map_err(|e| e.to_py(py)))
            .collect::<PyResult<Vec<_>>>()?;
        let local_ips = if is_single(ips)? {
            vec![convert::ip_of(py, ips)?]
        } else {
            ips.try_iter()?
                .map(|i| convert::ip_of(py, &i?))
                .collect::<PyResult<Vec<_>>>()?
        };
        let config = RouterConfig {
            network_id,
            cidrs,
            local_node: convert::node_id(py, node_id)?,
            local_ips,
            medium: if ethernet {
                Medium::Ethernet
            } else {
                Medium::Ip
            },
            requestor: requestor.map(|r| convert::node_id(py, r)).transpose()?,
        };
        let inner = Router::new(config).map_err(|e| e.to_py(py))?;
        Ok(PyRouter {
            inner,
            names: FxHashMap::default(),
        })
    }

    #[getter]
    fn network_id(&self) -> &str {
        self.inner.network_id()
    }

    #[getter]
    fn node_id(&self) -> String {
        self.inner.local_node().to_string()
    }

    #[getter]
    fn ips(&self) -> Vec<String> {
        self.inner
            .local_ips()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[getter]
    fn cidrs(&self) -> Vec<String> {
        self.inner.cidrs().iter().map(ToString::to_string).collect()
    }

    #[getter]
    fn medium(&self) -> &'static str {
        match self.inner.medium() {
            Medium::Ip => "ip",
            Medium::Ethernet => "ethernet",
        }
    }

    fn add_node(&mut self, py: Python<'_>, node_id: &str, ip: &Bound<'_, PyAny>) -> PyResult<bool> {
        let node = convert::node_id(py, node_id)?;
        let ip = convert::ip_of(py, ip)?;
        self.inner.add_node(node, ip).map_err(|e| e.to_py(py))
    }

    fn remove_node(&mut self, py: Python<'_>, node_id: &str) -> PyResult<bool> {
        let node = convert::node_id(py, node_id)?;
        let removed = self.inner.remove_node(&node).map_err(|e| e.to_py(py))?;
        self.names.remove(&node);
        Ok(removed)
    }

    fn nodes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (id, ips) in self.inner.nodes() {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            d.set_item(id.to_string(), ips)?;
        }
        Ok(d)
    }

    fn node_of(&self, py: Python<'_>, ip: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let ip = convert::ip_of(py, ip)?;
        Ok(self.inner.node_of(ip).map(|n| n.to_string()))
    }

    fn inject<'py>(
        &mut self,
        py: Python<'py>,
        packet: &Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        self.inject_into(py, packet, &out)?;
        Ok(out)
    }

    fn inject_many<'py>(
        &mut self,
        py: Python<'py>,
        packets: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        // Type-check the whole batch first, so a bad item routes nothing.
        let batch: Vec<Bound<'py, PyBytes>> = packets
            .try_iter()?
            .enumerate()
            .map(|(i, item)| {
                item?.cast_into::<PyBytes>().map_err(|e| {
                    PyTypeError::new_err(format!(
                        "inject_many: item {i} is {}, expected bytes",
                        e.into_inner()
                            .get_type()
                            .name()
                            .map_or("?".into(), |n| n.to_string())
                    ))
                })
            })
            .collect::<PyResult<_>>()?;
        let out = PyList::empty(py);
        for packet in &batch {
            self.inject_into(py, packet, &out)?;
        }
        Ok(out)
    }

    fn receive<'py>(
        &mut self,
        py: Python<'py>,
        packet: &Bound<'py, PyBytes>,
        from_node: &str,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let from = convert::node_id(py, from_node)?;
        match self.inner.receive(packet.as_bytes(), &from) {
            Ok(frame) => Ok(Some(frame_bytes(py, packet, &frame)?)),
            Err(_) => Ok(None),
        }
    }

    fn receive_many<'py>(
        &mut self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut batch: Vec<(NodeId, Bound<'py, PyBytes>)> = Vec::new();
        let mut last: Option<(String, NodeId)> = None;
        for (i, item) in items.try_iter()?.enumerate() {
            let (from, packet): (Bound<'py, PyString>, Bound<'py, PyBytes>) =
                item?.extract().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "receive_many: item {i} is not a (from_node: str, packet: bytes) pair"
                    ))
                })?;
            let from = from.to_str()?;
            let node = match &last {
                Some((s, id)) if s == from => *id,
                _ => {
                    let id = convert::node_id(py, from)?;
                    last = Some((from.to_owned(), id));
                    id
                }
            };
            batch.push((node, packet));
        }
        let out = PyList::empty(py);
        for (node, packet) in &batch {
            if let Ok(frame) = self.inner.receive(packet.as_bytes(), node) {
                out.append(frame_bytes(py, packet, &frame)?)?;
            }
        }
        Ok(out)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("network_id", self.inner.network_id())?;
        d.set_item("injected", s.injected)?;
        d.set_item("received", s.received)?;
        let drops = PyDict::new(py);
        for (reason, n) in s.drops.iter() {
            drops.set_item(reason.name(), n)?;
        }
        d.set_item("dropped", s.drops.total())?;
        d.set_item("drops", drops)?;
        let nodes = PyDict::new(py);
        for (id, c) in &s.nodes {
            nodes.set_item(id.to_string(), counters_dict(py, c)?)?;
        }
        d.set_item("nodes", nodes)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Router(network_id={:?}, cidrs={:?}, node_id='{}', ips={:?}, medium='{}', nodes={})",
            self.inner.network_id(),
            self.cidrs(),
            self.inner.local_node(),
            self.ips(),
            self.medium(),
            self.inner.nodes().count(),
        )
    }
}
