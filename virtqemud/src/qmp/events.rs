//! QMP events: the ones the domain lifecycle acts on, typed; every other event kept as raw JSON
//! so that nothing QEMU says is lost.

use serde::Deserialize;
use serde_json::Value;

/// When QEMU emitted an event (its `timestamp` member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct EventTimestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// Why a guest shut down or reset (`ShutdownCause` in qapi/run-state.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownCause {
    /// No shutdown (used internally by QEMU).
    None,
    /// An error prevents further use of the guest.
    HostError,
    /// A `quit` command.
    HostQmpQuit,
    /// A `system_reset` command.
    HostQmpSystemReset,
    /// A signal to QEMU (SIGTERM, SIGINT, SIGHUP).
    HostSignal,
    /// QEMU's user interface (window closed).
    HostUi,
    /// The guest shut itself down (ACPI, or a shutdown port).
    GuestShutdown,
    /// The guest reset itself.
    GuestReset,
    /// The guest panicked and the panic action is shutdown.
    GuestPanic,
    /// A partial reset of the guest (s390).
    SubsystemReset,
    /// A snapshot was loaded.
    SnapshotLoad,
    /// A cause this client does not know.
    #[serde(other)]
    Unknown,
}

/// What QEMU does about a guest panic (`GuestPanicAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestPanicAction {
    /// The guest is paused.
    Pause,
    /// The guest is powered off.
    Poweroff,
    /// The guest keeps running.
    Run,
    /// An action this client does not know.
    #[serde(other)]
    Unknown,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpEventKind {
    /// `SHUTDOWN`: the guest stopped for good (with `-no-shutdown` QEMU then pauses instead of
    /// exiting).
    Shutdown {
        /// Whether the guest asked for it (as opposed to the host).
        guest: bool,
        /// Why.
        reason: ShutdownCause,
    },
    /// `STOP`: the vCPUs stopped.
    Stop,
    /// `RESUME`: the vCPUs run again.
    Resume,
    /// `RESET`: the guest was reset.
    Reset {
        /// Whether the guest asked for it.
        guest: bool,
        /// Why.
        reason: ShutdownCause,
    },
    /// `POWERDOWN`: an ACPI power button press was delivered to the guest.
    Powerdown,
    /// `GUEST_PANICKED`: the guest reported a panic.
    GuestPanicked {
        /// What QEMU does about it.
        action: GuestPanicAction,
        /// The guest's panic information, as QEMU sent it.
        info: Option<Value>,
    },
    /// `DEVICE_DELETED`: a device finished unplugging.
    DeviceDeleted {
        /// The device's id, when it had one.
        device: Option<String>,
        /// Its QOM path.
        path: String,
    },
    /// `BALLOON_CHANGE`: the guest's balloon changed size.
    BalloonChange {
        /// The memory the guest now has, in bytes.
        actual: u64,
    },
    /// Any other event, or a known one whose data had an unexpected shape.
    Other {
        /// The event's name.
        name: String,
        /// Its `data` member (`null` when absent).
        data: Value,
    },
}

/// One event from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// What happened.
    pub kind: QmpEventKind,
    /// When, by QEMU's clock; `None` if QEMU sent no usable timestamp.
    pub timestamp: Option<EventTimestamp>,
}

impl QmpEvent {
    /// The event's name as QEMU sends it (`SHUTDOWN`, ...).
    pub fn name(&self) -> &str {
        match &self.kind {
            QmpEventKind::Shutdown { .. } => "SHUTDOWN",
            QmpEventKind::Stop => "STOP",
            QmpEventKind::Resume => "RESUME",
            QmpEventKind::Reset { .. } => "RESET",
            QmpEventKind::Powerdown => "POWERDOWN",
            QmpEventKind::GuestPanicked { .. } => "GUEST_PANICKED",
            QmpEventKind::DeviceDeleted { .. } => "DEVICE_DELETED",
            QmpEventKind::BalloonChange { .. } => "BALLOON_CHANGE",
            QmpEventKind::Other { name, .. } => name,
        }
    }

    /// The event in a QMP message object (one with an `event` member).
    pub fn from_message(name: &str, message: &serde_json::Map<String, Value>) -> QmpEvent {
        let timestamp = message
            .get("timestamp")
            .and_then(|t| EventTimestamp::deserialize(t).ok());
        let data = message.get("data").cloned().unwrap_or(Value::Null);
        QmpEvent {
            kind: parse_kind(name, data),
            timestamp,
        }
    }
}

#[derive(Deserialize)]
struct ShutdownData {
    guest: bool,
    reason: ShutdownCause,
}

#[derive(Deserialize)]
struct PanicData {
    action: GuestPanicAction,
    #[serde(default)]
    info: Option<Value>,
}

#[derive(Deserialize)]
struct DeviceDeletedData {
    #[serde(default)]
    device: Option<String>,
    path: String,
}

#[derive(Deserialize)]
struct BalloonData {
    actual: u64,
}

fn parse_kind(name: &str, data: Value) -> QmpEventKind {
    let typed = match name {
        "STOP" => Some(QmpEventKind::Stop),
        "RESUME" => Some(QmpEventKind::Resume),
        "POWERDOWN" => Some(QmpEventKind::Powerdown),
        "SHUTDOWN" => ShutdownData::deserialize(&data)
            .ok()
            .map(|d| QmpEventKind::Shutdown {
                guest: d.guest,
                reason: d.reason,
            }),
        "RESET" => ShutdownData::deserialize(&data)
            .ok()
            .map(|d| QmpEventKind::Reset {
                guest: d.guest,
                reason: d.reason,
            }),
        "GUEST_PANICKED" => PanicData::deserialize(&data)
            .ok()
            .map(|d| QmpEventKind::GuestPanicked {
                action: d.action,
                info: d.info,
            }),
        "DEVICE_DELETED" => DeviceDeletedData::deserialize(&data)
            .ok()
            .map(|d| QmpEventKind::DeviceDeleted {
                device: d.device,
                path: d.path,
            }),
        "BALLOON_CHANGE" => BalloonData::deserialize(&data)
            .ok()
            .map(|d| QmpEventKind::BalloonChange { actual: d.actual }),
        _ => None,
    };
    typed.unwrap_or_else(|| {
        if matches!(
            name,
            "SHUTDOWN" | "RESET" | "GUEST_PANICKED" | "DEVICE_DELETED" | "BALLOON_CHANGE"
        ) {
            tracing::debug!(event = name, %data, "QMP event data has an unexpected shape; kept raw");
        }
        QmpEventKind::Other {
            name: name.to_owned(),
            data,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> QmpEvent {
        let map = value.as_object().expect("object").clone();
        let name = map["event"].as_str().expect("name").to_owned();
        QmpEvent::from_message(&name, &map)
    }

    #[test]
    fn shutdown_carries_guest_and_reason() {
        let e = event(
            json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"},
            "timestamp": {"seconds": 1, "microseconds": 2}}),
        );
        assert_eq!(
            e.kind,
            QmpEventKind::Shutdown {
                guest: true,
                reason: ShutdownCause::GuestShutdown
            }
        );
        assert_eq!(
            e.timestamp,
            Some(EventTimestamp {
                seconds: 1,
                microseconds: 2
            })
        );
    }

    #[test]
    fn unknown_shutdown_reason_is_kept_as_unknown() {
        let e = event(json!({"event": "SHUTDOWN", "data": {"guest": false, "reason": "new-cause"}}));
        assert_eq!(
            e.kind,
            QmpEventKind::Shutdown {
                guest: false,
                reason: ShutdownCause::Unknown
            }
        );
    }

    #[test]
    fn unknown_event_is_kept_raw() {
        let e = event(json!({"event": "VSERPORT_CHANGE", "data": {"id": "c0", "open": true}}));
        assert_eq!(e.name(), "VSERPORT_CHANGE");
        assert_eq!(
            e.kind,
            QmpEventKind::Other {
                name: "VSERPORT_CHANGE".into(),
                data: json!({"id": "c0", "open": true})
            }
        );
    }

    #[test]
    fn known_event_with_bad_data_is_kept_raw() {
        let e = event(json!({"event": "BALLOON_CHANGE", "data": {"actual": "lots"}}));
        assert!(matches!(e.kind, QmpEventKind::Other { ref name, .. } if name == "BALLOON_CHANGE"));
    }

    #[test]
    fn panic_device_deleted_and_balloon_parse() {
        let e = event(json!({"event": "GUEST_PANICKED", "data": {"action": "pause"}}));
        assert_eq!(
            e.kind,
            QmpEventKind::GuestPanicked {
                action: GuestPanicAction::Pause,
                info: None
            }
        );
        let e = event(
            json!({"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/net0", "device": "net0"}}),
        );
        assert_eq!(
            e.kind,
            QmpEventKind::DeviceDeleted {
                device: Some("net0".into()),
                path: "/machine/peripheral/net0".into()
            }
        );
        let e = event(json!({"event": "BALLOON_CHANGE", "data": {"actual": 1073741824u64}}));
        assert_eq!(e.kind, QmpEventKind::BalloonChange { actual: 1 << 30 });
    }
}
