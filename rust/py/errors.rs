//! The one place where core errors become Python exceptions.
//!
//! The exception classes are defined in Python (`golem_vpn.errors`) and looked up here
//! by name, so Python code and native code raise the very same classes.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::node_id::InvalidNodeId;
use crate::router::{CidrError, RouterError};

/// Builds an exception of class `golem_vpn.errors.<name>` with `message`.
pub(crate) fn error(py: Python<'_>, name: &str, message: String) -> PyErr {
    let class = py
        .import("golem_vpn.errors")
        .and_then(|m| m.getattr(name))
        .and_then(|c| c.cast_into::<PyType>().map_err(Into::into));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        // Only if the Python half of the package is missing: still raise something clear.
        Err(_) => PyValueError::new_err(message),
    }
}

/// Maps a core error to its Python exception.
pub(crate) trait ToPyErr {
    /// The exception for this error.
    fn to_py(&self, py: Python<'_>) -> PyErr;
}

impl ToPyErr for RouterError {
    fn to_py(&self, py: Python<'_>) -> PyErr {
        let class = match self {
            RouterError::OutOfRange { .. } => "AddressOutOfRange",
            RouterError::Reserved { .. } => "AddressReserved",
            RouterError::Taken { .. } => "AddressTaken",
            RouterError::RemoveLocal(_) => "GolemVpnError",
            RouterError::Config(_) => "AddressError",
        };
        error(py, class, self.to_string())
    }
}

impl ToPyErr for InvalidNodeId {
    fn to_py(&self, py: Python<'_>) -> PyErr {
        error(py, "InvalidNodeId", self.to_string())
    }
}

impl ToPyErr for CidrError {
    fn to_py(&self, py: Python<'_>) -> PyErr {
        error(py, "AddressError", self.to_string())
    }
}

impl ToPyErr for crate::stack::StackError {
    fn to_py(&self, py: Python<'_>) -> PyErr {
        use crate::stack::StackError as E;
        let class = match self {
            E::Config(_) => "StackConfigError",
            E::NoSocket(_) | E::WrongKind(..) => "SocketClosed",
            E::AddrInUse(_) | E::NoFreePort => "AddressInUse",
            E::Unreachable(_) => "NetworkUnreachable",
            E::InvalidDestination(_) => "AddressError",
            E::NotConnected => "NotConnected",
            E::TooLarge { .. } => "DatagramTooLarge",
            E::WouldBlock => "WouldBlock",
        };
        error(py, class, self.to_string())
    }
}
