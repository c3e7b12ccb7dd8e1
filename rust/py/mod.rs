//! Thin PyO3 bindings: unwrap arguments, call the core, map errors. No logic lives here.

mod convert;
mod errors;
mod router;
mod stack;
mod transport;

use pyo3::prelude::*;

/// The native module `golem_vpn._golem_vpn`.
#[pymodule(gil_used = false)]
fn _golem_vpn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "build_profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add("MAX_PACKET_LEN", crate::wire::MAX_PACKET_LEN)?;
    m.add("DEFAULT_TUN_MTU", crate::datapath::DEFAULT_TUN_MTU)?;
    m.add(
        "DROP_REASONS",
        crate::router::DropReason::ALL
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>(),
    )?;
    m.add_class::<router::PyRouter>()?;
    m.add_class::<stack::PyStack>()?;
    m.add_class::<stack::PyTcpStatus>()?;
    m.add_class::<transport::PyIdentity>()?;
    m.add_class::<transport::PyNodeTransport>()?;
    m.add_class::<transport::PyRelay>()?;
    Ok(())
}
