//! What can go wrong talking to QEMU's monitor: a typed [`QmpError`], cheap to clone so that one
//! lost connection can be reported to every waiting command and to the event stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// QEMU's error classes (`QapiErrorClass` in qapi/control.json), as QEMU names them on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpErrorClass {
    /// `GenericError`: most failures.
    GenericError,
    /// `CommandNotFound`: this QEMU has no such command.
    CommandNotFound,
    /// `DeviceNotActive`: the device exists but is not active (e.g. no balloon driver).
    DeviceNotActive,
    /// `DeviceNotFound`: no device with that name.
    DeviceNotFound,
    /// `KVMMissingCap`: KVM lacks a capability the command needs.
    KvmMissingCap,
    /// A class this client does not know, kept as QEMU spelled it.
    Other(String),
}

impl QmpErrorClass {
    /// The class named `name` on the wire.
    pub fn from_wire(name: &str) -> QmpErrorClass {
        match name {
            "GenericError" => QmpErrorClass::GenericError,
            "CommandNotFound" => QmpErrorClass::CommandNotFound,
            "DeviceNotActive" => QmpErrorClass::DeviceNotActive,
            "DeviceNotFound" => QmpErrorClass::DeviceNotFound,
            "KVMMissingCap" => QmpErrorClass::KvmMissingCap,
            other => QmpErrorClass::Other(other.to_owned()),
        }
    }

    /// The class as QEMU spells it.
    pub fn as_str(&self) -> &str {
        match self {
            QmpErrorClass::GenericError => "GenericError",
            QmpErrorClass::CommandNotFound => "CommandNotFound",
            QmpErrorClass::DeviceNotActive => "DeviceNotActive",
            QmpErrorClass::DeviceNotFound => "DeviceNotFound",
            QmpErrorClass::KvmMissingCap => "KVMMissingCap",
            QmpErrorClass::Other(name) => name,
        }
    }
}

impl std::fmt::Display for QmpErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed QMP exchange.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    /// The monitor socket could not be reached.
    #[error("cannot connect to QEMU's monitor socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// QEMU answered the command with an error.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Command {
        /// The command's name, e.g. `device_del`.
        command: String,
        /// QEMU's error class.
        class: QmpErrorClass,
        /// QEMU's description.
        desc: String,
    },
    /// No answer within the command's time limit. The connection stays usable; a late answer
    /// is dropped.
    #[error("QEMU did not answer {command} within {timeout:?}")]
    Timeout {
        /// The command's name (`greeting` while waiting for QEMU's greeting).
        command: String,
        /// The limit that passed.
        timeout: Duration,
    },
    /// The connection ended (QEMU exited, the socket broke, or the client was closed). Every
    /// command still waiting, and the event stream, get this error.
    #[error("the connection to QEMU's monitor was lost: {reason}")]
    Disconnected {
        /// What ended it.
        reason: String,
    },
    /// QEMU sent something that is not QMP (not JSON, an impossibly long line, no greeting).
    /// The connection is closed: after a broken message nothing that follows can be trusted.
    #[error("QEMU's monitor sent something that is not QMP: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// The answer was JSON but not the shape this command returns.
    #[error("cannot decode QEMU's answer to {command}")]
    Decode {
        /// The command's name.
        command: String,
        /// Why.
        #[source]
        source: Arc<serde_json::Error>,
    },
}

impl QmpError {
    /// Whether the connection is gone, so that no further command can succeed.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            QmpError::Disconnected { .. } | QmpError::Protocol { .. } | QmpError::Connect { .. }
        )
    }

    /// QEMU's error class, when QEMU refused the command.
    pub fn class(&self) -> Option<&QmpErrorClass> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}
