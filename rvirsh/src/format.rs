//! virsh's output layouts, one function each, so every shape is checked against the text virsh
//! prints for the same data: the table (`vsh-table.c`), `%-15s` info blocks, pretty
//! capacities, and the names of states, reasons and events.

use std::fmt::Write as _;

use rvirt_proto::v1::{DomainEventType, DomainState, StoragePoolState, StorageVolType};

/// A cell as virsh's table prints it: control characters (and `\x` itself) as `\xNN`.
fn safe_encode(cell: &str) -> String {
    let mut out = String::with_capacity(cell.len());
    let mut chars = cell.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_control() || (c == '\\' && chars.peek() == Some(&'x')) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// virsh's table: each cell as ` %s`, every column but the last padded to its widest cell plus
/// two spaces; under the header a line of (width + 3) dashes per column; no header, and no
/// header widths, when `header` is false (`-q`).
pub fn table(head: &[&str], rows: &[Vec<String>], header: bool) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| safe_encode(c)).collect())
        .collect();
    let head: Vec<String> = head.iter().map(|c| safe_encode(c)).collect();
    let mut widths = vec![0usize; head.len()];
    let mut measure = |row: &[String]| {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    };
    if header {
        measure(&head);
    }
    for row in &rows {
        measure(row);
    }
    let line = |row: &[String]| {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            out.push(' ');
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
        out
    };
    let mut out = String::new();
    if header {
        out.push_str(&line(&head));
        for w in &widths {
            out.extend(std::iter::repeat_n('-', w + 3));
        }
        out.push('\n');
    }
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// virsh's `vshPrettyCapacity`: the value in the largest binary unit it reaches.
pub fn pretty_capacity(bytes: u64) -> (f64, &'static str) {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut limit = 1024f64;
    let value = bytes as f64;
    for (i, unit) in UNITS.iter().enumerate() {
        if value < limit || i == UNITS.len() - 1 {
            return (value / (limit / 1024.0), unit);
        }
        limit *= 1024.0;
    }
    (value, "B")
}

/// A capacity as `%.2lf %s`.
pub fn capacity(bytes: u64) -> String {
    let (value, unit) = pretty_capacity(bytes);
    format!("{value:.2} {unit}")
}

/// One `%-15s %s` line.
fn info_line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:<15} {value}");
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// virsh's name of a domain state.
pub fn domain_state(state: DomainState) -> &'static str {
    match state {
        DomainState::Nostate => "no state",
        DomainState::Running => "running",
        DomainState::Blocked => "idle",
        DomainState::Paused => "paused",
        DomainState::Shutdown => "in shutdown",
        DomainState::Shutoff => "shut off",
        DomainState::Crashed => "crashed",
        DomainState::Pmsuspended => "pmsuspended",
    }
}

/// virsh's name of a state reason (`domstate --reason`), by state and libvirt's number.
pub fn domain_state_reason(state: DomainState, reason: i32) -> &'static str {
    const RUNNING: &[&str] = &[
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from snapshot",
        "unpaused",
        "migration canceled",
        "save canceled",
        "event wakeup",
        "crashed",
        "post-copy",
        "post-copy failed",
    ];
    const PAUSED: &[&str] = &[
        "unknown",
        "user",
        "migrating",
        "saving",
        "dumping",
        "I/O error",
        "watchdog",
        "from snapshot",
        "shutting down",
        "creating snapshot",
        "crashed",
        "starting up",
        "post-copy",
        "post-copy failed",
        "api error",
    ];
    const SHUTDOWN: &[&str] = &["unknown", "user"];
    const SHUTOFF: &[&str] = &[
        "unknown",
        "shutdown",
        "destroyed",
        "crashed",
        "migrated",
        "saved",
        "failed",
        "from snapshot",
        "daemon",
    ];
    const CRASHED: &[&str] = &["unknown", "panicked"];
    const UNKNOWN: &[&str] = &["unknown"];
    let names = match state {
        DomainState::Running => RUNNING,
        DomainState::Paused => PAUSED,
        DomainState::Shutdown => SHUTDOWN,
        DomainState::Shutoff => SHUTOFF,
        DomainState::Crashed => CRASHED,
        DomainState::Nostate | DomainState::Blocked | DomainState::Pmsuspended => UNKNOWN,
    };
    usize::try_from(reason)
        .ok()
        .and_then(|r| names.get(r))
        .copied()
        .unwrap_or("unknown")
}

/// `domstate` and `domstate --reason`.
pub fn domstate(state: DomainState, reason: i32, show_reason: bool) -> String {
    if show_reason {
        format!(
            "{} ({})\n",
            domain_state(state),
            domain_state_reason(state, reason)
        )
    } else {
        format!("{}\n", domain_state(state))
    }
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainRow {
    /// Runtime id, `None` for inactive domains.
    pub id: Option<i32>,
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// State.
    pub state: DomainState,
    /// `<title>`.
    pub title: String,
    /// Shown as `saved` (`list --managed-save` and a managed save image).
    pub saved: bool,
}

/// How `list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListShape {
    /// `--uuid`.
    pub uuid: bool,
    /// `--name`.
    pub name: bool,
    /// `--id`.
    pub id: bool,
    /// `--title`.
    pub title: bool,
    /// Not `-q`.
    pub header: bool,
}

/// virsh's order for `list`: running domains by id, then the others by name (ignoring case).
pub fn sort_domains(rows: &mut [DomainRow]) {
    rows.sort_by(|a, b| match (a.id, b.id) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
    });
}

/// `list`: the table, or `--uuid`/`--name`/`--id` lines (space-separated when combined).
pub fn domain_list(rows: &[DomainRow], shape: ListShape) -> String {
    let id_text = |r: &DomainRow| r.id.map_or("-".to_owned(), |i| i.to_string());
    if !(shape.uuid || shape.name || shape.id) {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let state = if r.saved { "saved" } else { domain_state(r.state) };
                let mut row = vec![id_text(r), r.name.clone(), state.to_owned()];
                if shape.title {
                    row.push(r.title.clone());
                }
                row
            })
            .collect();
        let head: &[&str] = if shape.title {
            &["Id", "Name", "State", "Title"]
        } else {
            &["Id", "Name", "State"]
        };
        return table(head, &cells, shape.header);
    }
    let mut out = String::new();
    for r in rows {
        let mut fields: Vec<String> = Vec::new();
        if shape.uuid {
            fields.push(r.uuid.clone());
        }
        if shape.id {
            // Only live domains have an id to print, unless other fields are asked for too.
            if r.id.is_none() && !shape.uuid && !shape.name {
                continue;
            }
            fields.push(id_text(r));
        }
        if shape.name {
            fields.push(r.name.clone());
        }
        out.push_str(&fields.join(" "));
        out.push('\n');
    }
    out
}

/// What `dominfo` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct DomInfo {
    /// Runtime id.
    pub id: Option<i32>,
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// `<os><type>`, when known.
    pub os_type: Option<String>,
    /// State.
    pub state: DomainState,
    /// Active vCPUs.
    pub vcpus: u32,
    /// CPU time in nanoseconds.
    pub cpu_time_ns: u64,
    /// Maximum memory in KiB.
    pub max_memory_kib: u64,
    /// Current memory in KiB.
    pub memory_kib: u64,
    /// Persistent.
    pub persistent: bool,
    /// Autostart, when known.
    pub autostart: Option<bool>,
    /// Managed save image.
    pub managed_save: bool,
}

/// `dominfo`.
pub fn dominfo(d: &DomInfo) -> String {
    let mut out = String::new();
    match d.id {
        Some(id) => info_line(&mut out, "Id:", id),
        None => info_line(&mut out, "Id:", "-"),
    }
    info_line(&mut out, "Name:", &d.name);
    info_line(&mut out, "UUID:", &d.uuid);
    if let Some(os) = &d.os_type {
        info_line(&mut out, "OS Type:", os);
    }
    info_line(&mut out, "State:", domain_state(d.state));
    info_line(&mut out, "CPU(s):", d.vcpus);
    if d.cpu_time_ns != 0 {
        info_line(
            &mut out,
            "CPU time:",
            format!("{:.1}s", d.cpu_time_ns as f64 / 1e9),
        );
    }
    // libvirt reports "no limit" for an unsigned long that is all ones.
    if d.max_memory_kib == u64::from(u32::MAX) {
        info_line(&mut out, "Max memory:", "no limit");
    } else {
        info_line(&mut out, "Max memory:", format!("{} KiB", d.max_memory_kib));
    }
    info_line(&mut out, "Used memory:", format!("{} KiB", d.memory_kib));
    info_line(&mut out, "Persistent:", yes_no(d.persistent));
    if let Some(autostart) = d.autostart {
        info_line(
            &mut out,
            "Autostart:",
            if autostart { "enable" } else { "disable" },
        );
    }
    info_line(&mut out, "Managed save:", yes_no(d.managed_save));
    out
}

/// `nodeinfo`.
pub fn nodeinfo(n: &rvirt_proto::v1::GetNodeInfoResponse) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<20} {value}");
    };
    line("CPU model:", n.model.clone());
    line("CPU(s):", n.cpus.to_string());
    line("CPU frequency:", format!("{} MHz", n.mhz));
    line("CPU socket(s):", n.sockets.to_string());
    line("Core(s) per socket:", n.cores.to_string());
    line("Thread(s) per core:", n.threads.to_string());
    line("NUMA cell(s):", n.nodes.to_string());
    line("Memory size:", format!("{} KiB", n.memory_kib));
    out
}

/// A version number (major * 1,000,000 + minor * 1,000 + release) as `major.minor.release`.
pub fn version_text(number: u64) -> String {
    format!(
        "{}.{}.{}",
        number / 1_000_000,
        (number / 1_000) % 1_000,
        number % 1_000
    )
}

/// `version [--daemon]`: the library lines name the libvirt release whose API rvirt mirrors.
pub fn version(hv_type: &str, api_version: u64, hv_version: u64, daemon: Option<u64>) -> String {
    let api = version_text(api_version);
    let mut out = String::new();
    let _ = writeln!(out, "Compiled against library: libvirt {api}");
    let _ = writeln!(out, "Using library: libvirt {api}");
    let _ = writeln!(out, "Using API: {hv_type} {api}");
    if hv_version == 0 {
        let _ = writeln!(out, "Cannot extract running {hv_type} hypervisor version");
    } else {
        let _ = writeln!(out, "Running hypervisor: {hv_type} {}", version_text(hv_version));
    }
    if let Some(d) = daemon {
        let _ = writeln!(out, "Running against daemon: {}", version_text(d));
    }
    out
}

/// `net-info`.
pub fn net_info(n: &rvirt_proto::v1::Network) -> String {
    let mut out = String::new();
    info_line(&mut out, "Name:", &n.name);
    info_line(&mut out, "UUID:", &n.uuid);
    info_line(&mut out, "Active:", yes_no(n.active));
    info_line(&mut out, "Persistent:", yes_no(n.persistent));
    info_line(&mut out, "Autostart:", yes_no(n.autostart));
    if !n.bridge_name.is_empty() {
        info_line(&mut out, "Bridge:", &n.bridge_name);
    }
    out
}

/// `net-list` (table form): networks sorted by name.
pub fn net_list(networks: &[rvirt_proto::v1::Network], header: bool) -> String {
    let rows: Vec<Vec<String>> = networks
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                if n.active { "active" } else { "inactive" }.to_owned(),
                yes_no(n.autostart).to_owned(),
                yes_no(n.persistent).to_owned(),
            ]
        })
        .collect();
    table(&["Name", "State", "Autostart", "Persistent"], &rows, header)
}

/// `net-dhcp-leases`: expiry in local time, MAC, protocol, address/prefix, host name, client id.
pub fn net_dhcp_leases(leases: &[rvirt_proto::v1::NetworkDhcpLease], header: bool) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            let expiry = l
                .expiry_time
                .as_ref()
                .map(|t| local_time(t.seconds))
                .unwrap_or_else(|| "-".to_owned());
            let proto = match l.r#type() {
                rvirt_proto::v1::IpAddrType::Ipv4 => "ipv4",
                rvirt_proto::v1::IpAddrType::Ipv6 => "ipv6",
            };
            vec![
                expiry,
                dash(&l.mac),
                proto.to_owned(),
                format!("{}/{}", l.ipaddr, l.prefix),
                dash(&l.hostname),
                dash(&l.clientid),
            ]
        })
        .collect();
    table(
        &[
            "Expiry Time",
            "MAC address",
            "Protocol",
            "IP address",
            "Hostname",
            "Client ID or DUID",
        ],
        &rows,
        header,
    )
}

/// `%Y-%m-%d %H:%M:%S` in the local time zone.
fn local_time(seconds: i64) -> String {
    let time = libc::time_t::try_from(seconds).unwrap_or_default();
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid for the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&time, &mut tm).is_null() {
            return seconds.to_string();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// virsh's name of a pool state.
pub fn pool_state(state: StoragePoolState) -> &'static str {
    match state {
        StoragePoolState::Inactive => "inactive",
        StoragePoolState::Building => "building",
        StoragePoolState::Running => "running",
        StoragePoolState::Degraded => "degraded",
        StoragePoolState::Inaccessible => "inaccessible",
    }
}

/// What `pool-list` and `pool-info` show of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRow {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Active (`virStoragePoolIsActive`).
    pub active: bool,
    /// Persistent.
    pub persistent: bool,
    /// Autostart.
    pub autostart: bool,
    /// `virStoragePoolGetInfo`.
    pub info: rvirt_proto::v1::GetStoragePoolInfoResponse,
}

fn pool_has_sizes(info: &rvirt_proto::v1::GetStoragePoolInfoResponse) -> bool {
    matches!(
        info.state(),
        StoragePoolState::Running | StoragePoolState::Degraded
    )
}

/// `pool-list` and `pool-list --details`.
pub fn pool_list(pools: &[PoolRow], details: bool, header: bool) -> String {
    if !details {
        let rows: Vec<Vec<String>> = pools
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    if p.active { "active" } else { "inactive" }.to_owned(),
                    yes_no(p.autostart).to_owned(),
                ]
            })
            .collect();
        return table(&["Name", "State", "Autostart"], &rows, header);
    }
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let (cap, alloc, avail) = if pool_has_sizes(&p.info) {
                (
                    capacity(p.info.capacity_bytes),
                    capacity(p.info.allocation_bytes),
                    capacity(p.info.available_bytes),
                )
            } else {
                ("-".into(), "-".into(), "-".into())
            };
            vec![
                p.name.clone(),
                pool_state(p.info.state()).to_owned(),
                yes_no(p.autostart).to_owned(),
                yes_no(p.persistent).to_owned(),
                cap,
                alloc,
                avail,
            ]
        })
        .collect();
    table(
        &[
            "Name",
            "State",
            "Autostart",
            "Persistent",
            "Capacity",
            "Allocation",
            "Available",
        ],
        &rows,
        header,
    )
}

/// `pool-list --uuid` / `--name`: `%-36s` then a space or newline, `%-20s` per name.
pub fn pool_list_ids(pools: &[PoolRow], uuid: bool, name: bool) -> String {
    let mut out = String::new();
    for p in pools {
        if uuid {
            let _ = write!(out, "{:<36}{}", p.uuid, if name { ' ' } else { '\n' });
        }
        if name {
            let _ = writeln!(out, "{:<20}", p.name);
        }
    }
    out
}

/// `pool-info [--bytes]`.
pub fn pool_info(p: &PoolRow, bytes: bool) -> String {
    let mut out = String::new();
    info_line(&mut out, "Name:", &p.name);
    info_line(&mut out, "UUID:", &p.uuid);
    info_line(&mut out, "State:", pool_state(p.info.state()));
    info_line(&mut out, "Persistent:", yes_no(p.persistent));
    info_line(&mut out, "Autostart:", yes_no(p.autostart));
    if pool_has_sizes(&p.info) {
        let sizes = [
            ("Capacity:", p.info.capacity_bytes),
            ("Allocation:", p.info.allocation_bytes),
            ("Available:", p.info.available_bytes),
        ];
        for (label, value) in sizes {
            if bytes {
                info_line(&mut out, label, value);
            } else {
                info_line(&mut out, label, capacity(value));
            }
        }
    }
    out
}

/// virsh's name of a volume type.
pub fn vol_type(kind: StorageVolType) -> &'static str {
    match kind {
        StorageVolType::File => "file",
        StorageVolType::Block => "block",
        StorageVolType::Dir => "dir",
        StorageVolType::Network => "network",
        StorageVolType::Netdir => "netdir",
        StorageVolType::Ploop => "ploop",
    }
}

/// One row of `vol-list`.
#[derive(Debug, Clone, PartialEq)]
pub struct VolRow {
    /// Name.
    pub name: String,
    /// Path.
    pub path: String,
    /// Type and sizes, when `--details` asked for them.
    pub info: Option<rvirt_proto::v1::GetStorageVolInfoResponse>,
}

/// `vol-list` and `vol-list --details`.
pub fn vol_list(vols: &[VolRow], details: bool, header: bool) -> String {
    if !details {
        let rows: Vec<Vec<String>> = vols
            .iter()
            .map(|v| vec![v.name.clone(), v.path.clone()])
            .collect();
        return table(&["Name", "Path"], &rows, header);
    }
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| match &v.info {
            Some(info) => vec![
                v.name.clone(),
                v.path.clone(),
                vol_type(info.r#type()).to_owned(),
                capacity(info.capacity_bytes),
                capacity(info.allocation_bytes),
            ],
            None => vec![
                v.name.clone(),
                v.path.clone(),
                "unknown".into(),
                "unknown".into(),
                "unknown".into(),
            ],
        })
        .collect();
    table(&["Name", "Path", "Type", "Capacity", "Allocation"], &rows, header)
}

/// `vol-info [--bytes] [--physical]`.
pub fn vol_info(
    name: &str,
    info: &rvirt_proto::v1::GetStorageVolInfoResponse,
    bytes: bool,
    physical: bool,
) -> String {
    let mut out = String::new();
    info_line(&mut out, "Name:", name);
    info_line(&mut out, "Type:", vol_type(info.r#type()));
    let second = if physical {
        ("Physical:", info.physical_bytes.unwrap_or(info.allocation_bytes))
    } else {
        ("Allocation:", info.allocation_bytes)
    };
    for (label, value) in [("Capacity:", info.capacity_bytes), second] {
        if bytes {
            info_line(&mut out, label, format!("{value} bytes"));
        } else {
            info_line(&mut out, label, capacity(value));
        }
    }
    out
}

/// The name of a secret usage type, as libvirt spells it.
pub fn secret_usage(usage: rvirt_proto::v1::SecretUsageType) -> &'static str {
    use rvirt_proto::v1::SecretUsageType as U;
    match usage {
        U::None => "none",
        U::Volume => "volume",
        U::Ceph => "ceph",
        U::Iscsi => "iscsi",
        U::Tls => "tls",
        U::Vtpm => "vtpm",
    }
}

/// `secret-list`: UUID and `<usage type> <usage id>` or `Unused`.
pub fn secret_list(secrets: &[(String, &str, String)], header: bool) -> String {
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|(uuid, usage, id)| {
            let usage = if *usage == "none" {
                "Unused".to_owned()
            } else {
                format!("{usage} {id}")
            };
            vec![uuid.clone(), usage]
        })
        .collect();
    table(&["UUID", "Usage"], &rows, header)
}

/// virsh's names of a lifecycle event type and its detail.
pub fn lifecycle_names(kind: DomainEventType, detail: i32) -> (&'static str, &'static str) {
    let (name, details): (&str, &[&str]) = match kind {
        DomainEventType::Defined => ("Defined", &["Added", "Updated", "Renamed", "Snapshot"]),
        DomainEventType::Undefined => ("Undefined", &["Removed", "Renamed"]),
        DomainEventType::Started => (
            "Started",
            &["Booted", "Migrated", "Restored", "Snapshot", "Event wakeup"],
        ),
        DomainEventType::Suspended => (
            "Suspended",
            &[
                "Paused",
                "Migrated",
                "I/O Error",
                "Watchdog",
                "Restored",
                "Snapshot",
                "API error",
                "Post-copy",
                "Post-copy Error",
            ],
        ),
        DomainEventType::Resumed => (
            "Resumed",
            &["Unpaused", "Migrated", "Snapshot", "Post-copy", "Post-copy Error"],
        ),
        DomainEventType::Stopped => (
            "Stopped",
            &[
                "Shutdown",
                "Destroyed",
                "Crashed",
                "Migrated",
                "Saved",
                "Failed",
                "Snapshot",
            ],
        ),
        DomainEventType::Shutdown => (
            "Shutdown",
            &[
                "Finished",
                "Finished after guest request",
                "Finished after host request",
            ],
        ),
        DomainEventType::Pmsuspended => ("PMSuspended", &["Memory", "Disk"]),
        DomainEventType::Crashed => ("Crashed", &["Panicked", "Crashloaded"]),
    };
    let detail = usize::try_from(detail)
        .ok()
        .and_then(|d| details.get(d))
        .copied()
        .unwrap_or("unknown");
    (name, detail)
}

/// virsh's names of the domain events (`event --list`), indexed by libvirt's event id.
pub const DOMAIN_EVENT_NAMES: &[&str] = &[
    "lifecycle",
    "reboot",
    "rtc-change",
    "watchdog",
    "io-error",
    "graphics",
    "io-error-reason",
    "control-error",
    "block-job",
    "disk-change",
    "tray-change",
    "pm-wakeup",
    "pm-suspend",
    "balloon-change",
    "pm-suspend-disk",
    "device-removed",
    "block-job-2",
    "tunable",
    "agent-lifecycle",
    "device-added",
    "migration-iteration",
    "job-completed",
    "device-removal-failed",
    "metadata-change",
    "block-threshold",
    "memory-failure",
    "memory-device-size-change",
    "nic-mac-change",
];

/// The line `event` prints for one domain event.
pub fn domain_event_line(event: &rvirt_proto::v1::DomainEvent) -> String {
    use rvirt_proto::v1::domain_event::Event;
    let name = event.domain.as_ref().map_or("", |d| d.name.as_str());
    match &event.event {
        Some(Event::Lifecycle(l)) => {
            let (kind, detail) = lifecycle_names(l.r#type(), detail_number(l));
            format!("event 'lifecycle' for domain '{name}': {kind} {detail}\n")
        }
        Some(Event::Reboot(_)) => format!("event 'reboot' for domain '{name}'\n"),
        Some(Event::RtcChange(r)) => format!(
            "event 'rtc-change' for domain '{name}': {}\n",
            r.utc_offset_seconds
        ),
        Some(Event::BalloonChange(b)) => format!(
            "event 'balloon-change' for domain '{name}': {} KiB\n",
            b.actual_kib
        ),
        Some(Event::PmWakeup(_)) => format!("event 'pm-wakeup' for domain '{name}': reason unknown\n"),
        Some(Event::PmSuspend(_)) => format!("event 'pm-suspend' for domain '{name}': reason unknown\n"),
        Some(Event::PmSuspendDisk(_)) => {
            format!("event 'pm-suspend-disk' for domain '{name}': reason unknown\n")
        }
        Some(Event::ControlError(_)) => format!("event 'control-error' for domain '{name}'\n"),
        Some(other) => {
            let id = event_id_of(other);
            let kind = DOMAIN_EVENT_NAMES.get(id).copied().unwrap_or("unknown");
            format!("event '{kind}' for domain '{name}'\n")
        }
        None => format!("event 'unknown' for domain '{name}'\n"),
    }
}

fn detail_number(l: &rvirt_proto::v1::DomainLifecycleEvent) -> i32 {
    use rvirt_proto::v1::domain_lifecycle_event::Detail;
    match l.detail {
        Some(
            Detail::Defined(d)
            | Detail::Undefined(d)
            | Detail::Started(d)
            | Detail::Suspended(d)
            | Detail::Resumed(d)
            | Detail::Stopped(d)
            | Detail::Shutdown(d)
            | Detail::Pmsuspended(d)
            | Detail::Crashed(d),
        ) => d,
        None => 0,
    }
}

/// The libvirt event id of an event (its field number minus 10, see domain.proto).
fn event_id_of(event: &rvirt_proto::v1::domain_event::Event) -> usize {
    use rvirt_proto::v1::domain_event::Event;
    match event {
        Event::Lifecycle(_) => 0,
        Event::Reboot(_) => 1,
        Event::RtcChange(_) => 2,
        Event::Watchdog(_) => 3,
        Event::IoError(_) => 6,
        Event::Graphics(_) => 5,
        Event::ControlError(_) => 7,
        Event::BlockJob(_) => 8,
        Event::DiskChange(_) => 9,
        Event::TrayChange(_) => 10,
        Event::PmWakeup(_) => 11,
        Event::PmSuspend(_) => 12,
        Event::BalloonChange(_) => 13,
        Event::PmSuspendDisk(_) => 14,
        Event::DeviceRemoved(_) => 15,
        Event::Tunable(_) => 17,
        Event::AgentLifecycle(_) => 18,
        Event::DeviceAdded(_) => 19,
        Event::MigrationIteration(_) => 20,
        Event::JobCompleted(_) => 21,
        Event::DeviceRemovalFailed(_) => 22,
        Event::MetadataChange(_) => 23,
        Event::BlockThreshold(_) => 24,
        Event::MemoryFailure(_) => 25,
        Event::MemoryDeviceSizeChange(_) => 26,
        Event::NicMacChange(_) => 27,
    }
}

#[cfg(test)]
mod tests {
    use rvirt_proto::v1::*;

    use super::*;

    fn test_domain() -> DomainRow {
        DomainRow {
            id: Some(1),
            name: "test".into(),
            uuid: "6695eb01-f6a4-8304-79aa-97f2502e193f".into(),
            state: DomainState::Running,
            title: String::new(),
            saved: false,
        }
    }

    #[test]
    fn list_matches_virsh_for_the_test_domain() {
        let shape = ListShape {
            header: true,
            ..ListShape::default()
        };
        assert_eq!(
            domain_list(&[test_domain()], shape),
            " Id   Name   State\n----------------------\n 1    test   running\n"
        );
    }

    #[test]
    fn list_pads_to_the_widest_cell_and_dashes_inactive_ids() {
        let mut off = test_domain();
        off.id = None;
        off.name = "a-longer-name".into();
        off.state = DomainState::Shutoff;
        let shape = ListShape {
            header: true,
            ..ListShape::default()
        };
        assert_eq!(
            domain_list(&[test_domain(), off], shape),
            concat!(
                " Id   Name            State\n",
                "--------------------------------\n",
                " 1    test            running\n",
                " -    a-longer-name   shut off\n"
            )
        );
    }

    #[test]
    fn empty_list_is_header_and_dashes() {
        let shape = ListShape {
            header: true,
            ..ListShape::default()
        };
        assert_eq!(
            domain_list(&[], shape),
            " Id   Name   State\n--------------------\n"
        );
    }

    #[test]
    fn quiet_list_has_no_header_and_ignores_header_widths() {
        let shape = ListShape::default();
        assert_eq!(domain_list(&[test_domain()], shape), " 1   test   running\n");
    }

    #[test]
    fn list_name_and_uuid_lines() {
        let mut off = test_domain();
        off.id = None;
        let shape = ListShape {
            uuid: true,
            name: true,
            ..ListShape::default()
        };
        assert_eq!(
            domain_list(&[test_domain()], shape),
            "6695eb01-f6a4-8304-79aa-97f2502e193f test\n"
        );
        let ids = ListShape {
            id: true,
            ..ListShape::default()
        };
        assert_eq!(domain_list(&[test_domain(), off], ids), "1\n");
    }

    #[test]
    fn sorting_puts_running_by_id_then_names() {
        let mut rows = vec![
            DomainRow {
                id: None,
                name: "b".into(),
                ..test_domain()
            },
            DomainRow {
                id: Some(3),
                name: "z".into(),
                ..test_domain()
            },
            DomainRow {
                id: None,
                name: "A".into(),
                ..test_domain()
            },
            DomainRow {
                id: Some(1),
                name: "y".into(),
                ..test_domain()
            },
        ];
        sort_domains(&mut rows);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["y", "z", "A", "b"]);
    }

    #[test]
    fn table_encodes_control_characters() {
        assert_eq!(
            table(&["A"], &[vec!["x\ty".into()]], true),
            " A\n---------\n x\\x09y\n"
        );
    }

    #[test]
    fn dominfo_matches_virsh_for_the_test_domain() {
        let info = DomInfo {
            id: Some(1),
            name: "test".into(),
            uuid: "6695eb01-f6a4-8304-79aa-97f2502e193f".into(),
            os_type: Some("hvm".into()),
            state: DomainState::Running,
            vcpus: 2,
            cpu_time_ns: 5_000_000_000,
            max_memory_kib: 8_388_608,
            memory_kib: 2_097_152,
            persistent: true,
            autostart: Some(false),
            managed_save: false,
        };
        assert_eq!(
            dominfo(&info),
            concat!(
                "Id:             1\n",
                "Name:           test\n",
                "UUID:           6695eb01-f6a4-8304-79aa-97f2502e193f\n",
                "OS Type:        hvm\n",
                "State:          running\n",
                "CPU(s):         2\n",
                "CPU time:       5.0s\n",
                "Max memory:     8388608 KiB\n",
                "Used memory:    2097152 KiB\n",
                "Persistent:     yes\n",
                "Autostart:      disable\n",
                "Managed save:   no\n",
            )
        );
    }

    #[test]
    fn dominfo_of_an_inactive_domain_has_no_id_and_no_cpu_time() {
        let info = DomInfo {
            id: None,
            name: "off".into(),
            uuid: "u".into(),
            os_type: None,
            state: DomainState::Shutoff,
            vcpus: 1,
            cpu_time_ns: 0,
            max_memory_kib: 1024,
            memory_kib: 1024,
            persistent: true,
            autostart: Some(true),
            managed_save: false,
        };
        let text = dominfo(&info);
        assert!(text.starts_with("Id:             -\n"), "{text}");
        assert!(!text.contains("CPU time"));
        assert!(text.contains("State:          shut off\n"));
        assert!(text.contains("Autostart:      enable\n"));
    }

    #[test]
    fn domstate_with_and_without_reason() {
        assert_eq!(domstate(DomainState::Running, 1, false), "running\n");
        assert_eq!(domstate(DomainState::Running, 1, true), "running (booted)\n");
        assert_eq!(domstate(DomainState::Shutoff, 2, true), "shut off (destroyed)\n");
        assert_eq!(domstate(DomainState::Paused, 1, true), "paused (user)\n");
        assert_eq!(domstate(DomainState::Paused, 99, true), "paused (unknown)\n");
    }

    #[test]
    fn nodeinfo_matches_virsh_for_the_test_host() {
        let info = GetNodeInfoResponse {
            model: "i686".into(),
            memory_kib: 3_145_728,
            cpus: 16,
            mhz: 1400,
            nodes: 2,
            sockets: 2,
            cores: 2,
            threads: 2,
        };
        assert_eq!(
            nodeinfo(&info),
            concat!(
                "CPU model:           i686\n",
                "CPU(s):              16\n",
                "CPU frequency:       1400 MHz\n",
                "CPU socket(s):       2\n",
                "Core(s) per socket:  2\n",
                "Thread(s) per core:  2\n",
                "NUMA cell(s):        2\n",
                "Memory size:         3145728 KiB\n",
            )
        );
    }

    #[test]
    fn version_matches_virsh_for_the_test_driver() {
        assert_eq!(
            version("TEST", 11_003_000, 2, Some(11_003_000)),
            concat!(
                "Compiled against library: libvirt 11.3.0\n",
                "Using library: libvirt 11.3.0\n",
                "Using API: TEST 11.3.0\n",
                "Running hypervisor: TEST 0.0.2\n",
                "Running against daemon: 11.3.0\n",
            )
        );
        assert!(
            version("QEMU", 11_003_000, 0, None).contains("Cannot extract running QEMU hypervisor version\n")
        );
    }

    fn default_network() -> rvirt_proto::v1::Network {
        rvirt_proto::v1::Network {
            name: "default".into(),
            uuid: "dd8fe884-6c02-601e-7551-cca97df1c5df".into(),
            active: true,
            persistent: true,
            autostart: false,
            bridge_name: "virbr0".into(),
        }
    }

    #[test]
    fn net_list_matches_virsh_for_the_default_network() {
        assert_eq!(
            net_list(&[default_network()], true),
            concat!(
                " Name      State    Autostart   Persistent\n",
                "--------------------------------------------\n",
                " default   active   no          yes\n",
            )
        );
    }

    #[test]
    fn net_info_matches_virsh_for_the_default_network() {
        assert_eq!(
            net_info(&default_network()),
            concat!(
                "Name:           default\n",
                "UUID:           dd8fe884-6c02-601e-7551-cca97df1c5df\n",
                "Active:         yes\n",
                "Persistent:     yes\n",
                "Autostart:      no\n",
                "Bridge:         virbr0\n",
            )
        );
    }

    #[test]
    fn dhcp_leases_table_dashes_missing_fields() {
        let lease = NetworkDhcpLease {
            iface: "virbr0".into(),
            expiry_time: None,
            r#type: IpAddrType::Ipv4 as i32,
            mac: "52:54:00:00:00:01".into(),
            ipaddr: "192.168.122.10".into(),
            prefix: 24,
            ..NetworkDhcpLease::default()
        };
        let text = net_dhcp_leases(&[lease], true);
        assert!(text.starts_with(" Expiry Time   MAC address         Protocol   IP address          Hostname   Client ID or DUID\n"), "{text}");
        assert!(
            text.ends_with(
                " -             52:54:00:00:00:01   ipv4       192.168.122.10/24   -          -\n"
            ),
            "{text}"
        );
    }

    fn default_pool() -> PoolRow {
        PoolRow {
            name: "default-pool".into(),
            uuid: "dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566".into(),
            active: true,
            persistent: true,
            autostart: false,
            info: GetStoragePoolInfoResponse {
                state: StoragePoolState::Running as i32,
                capacity_bytes: 100 << 30,
                allocation_bytes: 0,
                available_bytes: 100 << 30,
            },
        }
    }

    #[test]
    fn pool_list_matches_virsh_for_the_default_pool() {
        assert_eq!(
            pool_list(&[default_pool()], false, true),
            concat!(
                " Name           State    Autostart\n",
                "------------------------------------\n",
                " default-pool   active   no\n",
            )
        );
    }

    #[test]
    fn pool_list_details_matches_virsh_for_the_default_pool() {
        assert_eq!(
            pool_list(&[default_pool()], true, true),
            concat!(
                " Name           State     Autostart   Persistent   Capacity     Allocation   Available\n",
                "-----------------------------------------------------------------------------------------\n",
                " default-pool   running   no          yes          100.00 GiB   0.00 B       100.00 GiB\n",
            )
        );
    }

    #[test]
    fn pool_info_matches_virsh_for_the_default_pool() {
        assert_eq!(
            pool_info(&default_pool(), false),
            concat!(
                "Name:           default-pool\n",
                "UUID:           dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566\n",
                "State:          running\n",
                "Persistent:     yes\n",
                "Autostart:      no\n",
                "Capacity:       100.00 GiB\n",
                "Allocation:     0.00 B\n",
                "Available:      100.00 GiB\n",
            )
        );
        assert!(pool_info(&default_pool(), true).contains("Capacity:       107374182400\n"));
    }

    #[test]
    fn pool_info_of_an_inactive_pool_has_no_sizes() {
        let mut pool = default_pool();
        pool.active = false;
        pool.info = GetStoragePoolInfoResponse::default();
        let text = pool_info(&pool, false);
        assert!(text.contains("State:          inactive\n"));
        assert!(!text.contains("Capacity"));
    }

    #[test]
    fn pool_list_ids_use_virsh_widths() {
        assert_eq!(
            pool_list_ids(&[default_pool()], true, true),
            "dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566 default-pool        \n"
        );
    }

    fn vol_info_1m() -> GetStorageVolInfoResponse {
        GetStorageVolInfoResponse {
            r#type: StorageVolType::File as i32,
            capacity_bytes: 1 << 20,
            allocation_bytes: 1 << 20,
            physical_bytes: Some(1 << 20),
        }
    }

    #[test]
    fn vol_list_matches_virsh() {
        let rows = [VolRow {
            name: "disk1.img".into(),
            path: "/default-pool/disk1.img".into(),
            info: Some(vol_info_1m()),
        }];
        assert_eq!(
            vol_list(&rows, false, true),
            concat!(
                " Name        Path\n",
                "--------------------------------------\n",
                " disk1.img   /default-pool/disk1.img\n",
            )
        );
        assert_eq!(
            vol_list(&rows, true, true),
            concat!(
                " Name        Path                      Type   Capacity   Allocation\n",
                "---------------------------------------------------------------------\n",
                " disk1.img   /default-pool/disk1.img   file   1.00 MiB   1.00 MiB\n",
            )
        );
    }

    #[test]
    fn vol_info_matches_virsh() {
        assert_eq!(
            vol_info("disk1.img", &vol_info_1m(), false, false),
            concat!(
                "Name:           disk1.img\n",
                "Type:           file\n",
                "Capacity:       1.00 MiB\n",
                "Allocation:     1.00 MiB\n",
            )
        );
        assert_eq!(
            vol_info("disk1.img", &vol_info_1m(), true, true),
            concat!(
                "Name:           disk1.img\n",
                "Type:           file\n",
                "Capacity:       1048576 bytes\n",
                "Physical:       1048576 bytes\n",
            )
        );
    }

    #[test]
    fn secret_list_matches_virsh() {
        let rows = [
            (
                "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f".to_owned(),
                "volume",
                "/var/lib/x.img".to_owned(),
            ),
            (
                "1b81f5b2-8403-7b23-c8d6-21ccc2f80d6f".to_owned(),
                "none",
                String::new(),
            ),
        ];
        assert_eq!(
            secret_list(&rows, true),
            concat!(
                " UUID                                   Usage\n",
                "---------------------------------------------------------------\n",
                " 0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f   volume /var/lib/x.img\n",
                " 1b81f5b2-8403-7b23-c8d6-21ccc2f80d6f   Unused\n",
            )
        );
    }

    #[test]
    fn capacities_round_like_printf() {
        assert_eq!(capacity(0), "0.00 B");
        assert_eq!(capacity(1023), "1023.00 B");
        assert_eq!(capacity(1536), "1.50 KiB");
        assert_eq!(capacity(100 << 30), "100.00 GiB");
        assert_eq!(capacity(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn lifecycle_event_lines_match_virsh() {
        let event = DomainEvent {
            domain: Some(DomainIdentity {
                name: "test".into(),
                uuid: String::new(),
                id: -1,
            }),
            event: Some(domain_event::Event::Lifecycle(DomainLifecycleEvent {
                r#type: DomainEventType::Stopped as i32,
                detail: Some(domain_lifecycle_event::Detail::Stopped(
                    DomainEventStoppedDetail::Destroyed as i32,
                )),
            })),
            ..DomainEvent::default()
        };
        assert_eq!(
            domain_event_line(&event),
            "event 'lifecycle' for domain 'test': Stopped Destroyed\n"
        );
        let reboot = DomainEvent {
            event: Some(domain_event::Event::Reboot(DomainRebootEvent {})),
            ..event
        };
        assert_eq!(domain_event_line(&reboot), "event 'reboot' for domain 'test'\n");
    }
}
