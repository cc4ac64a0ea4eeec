//! `qemu-bench`: virtqemud's speed on this machine, printed as a table beside libvirt 11.3's
//! numbers measured on the same machine and the targets of issue #4 (at least 3× better than
//! libvirt; start at most 20 ms above raw QEMU).
//!
//! Rows: `DefineDomainXml` and `UndefineDomain` of N domains (mean latency and calls/s),
//! `ListDomains` with N defined (p50 of 200 calls), `StartDomain` to RUNNING and
//! `DestroyDomain` of a diskless TCG domain (p50 of S runs) beside raw QEMU's own time from exec
//! to its QMP greeting and to `qmp_capabilities` answered (same kind of command line, p50 of S
//! runs), and virtqemud's resident memory idle (once its capability probe is done) and with N
//! defined. See `docs/qemu-bench.md`.
//!
//! It starts the real `virtqemud` binary (from the directory this binary is in, or
//! `RVIRT_BIN_DIR`) in a temporary `RVIRT_ROOT`, waits for its readiness notification, talks to
//! it over its socket with the generated `DomainService` client, and removes everything at the
//! end (any QEMU left running under the temporary root is killed by pid). A call the daemon does
//! not serve makes its row say `unavailable: <the daemon's message>`; the other rows still run.
//!
//! ```text
//! cargo build --release -p virtqemud && target/release/qemu-bench [--domains N] [--starts N] [--poll-us N]
//! ```
//!
//! `--poll-us N` writes `busy_poll_us = N` into virtqemud's configuration file (0: no polling).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rvirt_proto::v1::domain_ref::Key;
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::host_service_client::HostServiceClient;
use rvirt_proto::v1::{
    DefineDomainXmlRequest, DestroyDomainRequest, DomainRef, DomainState, GetCapabilitiesRequest,
    ListDomainsRequest, StartDomainRequest, UndefineDomainRequest,
};
use tonic::transport::Channel;
use virtqemud::SPEC;

/// The emulator both virtqemud (by default) and the raw-QEMU row run.
const QEMU: &str = "qemu-system-x86_64";
/// How many `ListDomains` calls the list row takes its median of.
const LIST_CALLS: usize = 200;
/// The longest any one call or QEMU start may take before the row fails.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// libvirt 11.3 on this machine (issue #4), in milliseconds or MB.
mod libvirt {
    pub const DEFINE_MS: f64 = 1.9;
    pub const LIST_MS: f64 = 7.8;
    pub const START_MS: f64 = 446.0;
    pub const RAW_QEMU_MS: f64 = 59.0;
    pub const DESTROY_MS: f64 = 228.0;
    pub const RSS_MB: f64 = 24.0;
}

/// rvirt must be at least this many times better than libvirt.
const FACTOR: f64 = 3.0;
/// Start may cost at most this much above raw QEMU's exec-to-QMP-ready.
const START_OVERHEAD_MS: f64 = 20.0;

/// The diskless TCG domain every define, list and start row uses (named per use).
fn domain_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  <features>
    <acpi/>
  </features>
  <devices>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"
    )
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(kib_value)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The number of a `/proc` size field's value, such as `  8384 kB`.
fn kib_value(value: &str) -> Option<u64> {
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Where `pid`'s resident memory is, from `/proc/<pid>/smaps`, in KiB: its own binary's code,
/// the rest of its binary (read-only data, relocated data), other files (libc, libm, the
/// loader) and anonymous memory (heaps, stacks).
fn rss_breakdown(pid: u32) -> Result<[u64; 4], String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("cannot read /proc/{pid}/smaps: {e}"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let mut kib = [0u64; 4];
    let mut kind = 3;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some(value) = line.strip_prefix("Rss:") {
            kib[kind] += kib_value(value).unwrap_or(0);
        } else if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            kind = if path.is_empty() || path.starts_with('[') {
                3
            } else if Path::new(path) == exe {
                if perms.contains('x') { 0 } else { 1 }
            } else {
                2
            };
        }
    }
    Ok(kib)
}

/// The median of `samples` (sorted in place); zero when empty.
fn p50(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn by_name(name: &str) -> Option<DomainRef> {
    Some(DomainRef {
        key: Some(Key::Name(name.to_owned())),
    })
}

/// A request carrying [`CALL_DEADLINE`].
fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

/// What a failed call says in the table.
fn unavailable(what: &str, status: &tonic::Status) -> String {
    format!("{what}: {} ({:?})", status.message(), status.code())
}

/// Mean latency and rate of a series of calls made one after another.
struct Series {
    count: usize,
    mean: Duration,
    rate: f64,
}

impl Series {
    fn of(latencies: &[Duration], elapsed: Duration) -> Series {
        let count = latencies.len();
        let total: Duration = latencies.iter().sum();
        Series {
            count,
            mean: total / u32::try_from(count.max(1)).unwrap_or(u32::MAX),
            rate: count as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        }
    }
}

/// Everything measured; `Err` holds why a row is unavailable.
struct Results {
    domains: usize,
    starts: usize,
    rss_idle: Result<u64, String>,
    /// [`rss_breakdown`] when `rss_idle` was read.
    rss_idle_parts: Result<[u64; 4], String>,
    define: Result<Series, String>,
    undefine: Result<Series, String>,
    rss_defined: Result<u64, String>,
    list: Result<Duration, String>,
    start: Result<Duration, String>,
    destroy: Result<Duration, String>,
    raw_greeting: Result<Duration, String>,
    raw_ready: Result<Duration, String>,
}

/// Defines `count` domains `bench-NNNNN`, one call at a time; latencies and elapsed time.
async fn define_all(
    client: &mut DomainServiceClient<Channel>,
    count: usize,
) -> Result<(Vec<Duration>, Duration), String> {
    let xmls: Vec<String> = (0..count).map(|i| domain_xml(&format!("bench-{i:05}"))).collect();
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for xml in xmls {
        let at = Instant::now();
        client
            .define_domain_xml(request(DefineDomainXmlRequest { xml, flags: 0 }))
            .await
            .map_err(|e| unavailable("DefineDomainXml", &e))?;
        latencies.push(at.elapsed());
    }
    Ok((latencies, started.elapsed()))
}

/// Undefines the domains [`define_all`] defined.
async fn undefine_all(
    client: &mut DomainServiceClient<Channel>,
    count: usize,
) -> Result<(Vec<Duration>, Duration), String> {
    let names: Vec<String> = (0..count).map(|i| format!("bench-{i:05}")).collect();
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for name in names {
        let at = Instant::now();
        client
            .undefine_domain(request(UndefineDomainRequest {
                domain: by_name(&name),
                flags: 0,
            }))
            .await
            .map_err(|e| unavailable("UndefineDomain", &e))?;
        latencies.push(at.elapsed());
    }
    Ok((latencies, started.elapsed()))
}

/// p50 of [`LIST_CALLS`] `ListDomains` calls, checking they see `expected` domains.
async fn list_p50(client: &mut DomainServiceClient<Channel>, expected: usize) -> Result<Duration, String> {
    let mut latencies = Vec::with_capacity(LIST_CALLS);
    for _ in 0..LIST_CALLS {
        let at = Instant::now();
        let listed = client
            .list_domains(request(ListDomainsRequest { flags: 0 }))
            .await
            .map_err(|e| unavailable("ListDomains", &e))?;
        latencies.push(at.elapsed());
        let found = listed.into_inner().domains.len();
        if found != expected {
            return Err(format!("ListDomains returned {found} domains, not {expected}"));
        }
    }
    Ok(p50(&mut latencies))
}

/// Starts and destroys domain `bench-start` `runs` times after one unmeasured warm-up; the
/// p50 of start-to-RUNNING and of destroy.
async fn start_destroy(
    client: &mut DomainServiceClient<Channel>,
    runs: usize,
) -> (Result<Duration, String>, Result<Duration, String>) {
    const NAME: &str = "bench-start";
    if let Err(e) = client
        .define_domain_xml(request(DefineDomainXmlRequest {
            xml: domain_xml(NAME),
            flags: 0,
        }))
        .await
    {
        let why = unavailable("DefineDomainXml", &e);
        return (Err(why.clone()), Err(why));
    }
    let mut starts = Vec::with_capacity(runs);
    let mut destroys = Vec::with_capacity(runs);
    let mut failure = None;
    // Run 0 is the warm-up: the daemon may still be probing QEMU's capabilities.
    for run in 0..=runs {
        let at = Instant::now();
        let started = client
            .start_domain(request(StartDomainRequest {
                domain: by_name(NAME),
                flags: 0,
            }))
            .await;
        let start_time = at.elapsed();
        match started {
            Ok(response) => {
                let state = response.into_inner().domain.map(|d| d.state());
                if state != Some(DomainState::Running) {
                    failure = Some((
                        format!("StartDomain returned with the domain {state:?}, not running"),
                        None,
                    ));
                }
            }
            Err(e) => {
                failure = Some((unavailable("StartDomain", &e), None));
                break;
            }
        }
        let at = Instant::now();
        let destroyed = client
            .destroy_domain(request(DestroyDomainRequest {
                domain: by_name(NAME),
                flags: 0,
            }))
            .await;
        let destroy_time = at.elapsed();
        if let Err(e) = destroyed {
            let why = unavailable("DestroyDomain", &e);
            failure = Some(match failure {
                Some((start, _)) => (start, Some(why)),
                None => (format!("not measured: {why}"), Some(why)),
            });
            break;
        }
        if failure.is_some() {
            break;
        }
        if run > 0 {
            starts.push(start_time);
            destroys.push(destroy_time);
        }
    }
    let _ = client
        .undefine_domain(request(UndefineDomainRequest {
            domain: by_name(NAME),
            flags: 0,
        }))
        .await;
    match failure {
        Some((start, destroy)) => {
            let destroy = destroy.unwrap_or_else(|| format!("not measured: {start}"));
            (Err(start), Err(destroy))
        }
        None => (Ok(p50(&mut starts)), Ok(p50(&mut destroys))),
    }
}

/// The QEMU binary on `PATH`.
fn find_qemu() -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(QEMU))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| format!("{QEMU} is not on PATH"))
}

/// One raw QEMU start: exec to the QMP greeting, and to `qmp_capabilities` answered.
///
/// The monitor is set up as virtqemud and libvirt do: this process binds and listens on the
/// socket, QEMU inherits the listening descriptor (`-chardev socket,fd=N,server=on`), so the
/// connection is queued at once and the greeting arrives when QEMU serves it.
fn raw_qemu_once(qemu: &Path, dir: &Path) -> Result<(Duration, Duration), String> {
    let socket = dir.join("raw-qmp.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| format!("bind {}: {e}", socket.display()))?;
    let fd = listener.as_raw_fd();
    let mut command = Command::new(qemu);
    command
        .args(["-S", "-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-accel", "tcg", "-machine", "q35", "-m", "32"])
        .arg("-chardev")
        .arg(format!("socket,id=charmonitor,fd={fd},server=on,wait=off"))
        .args(["-mon", "chardev=charmonitor,mode=control"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only calls fcntl (async-signal-safe) on a
    // descriptor this process owns and keeps open until after the spawn.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let began = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    // QEMU holds the only listening descriptor now: if it dies, the connection fails.
    drop(listener);
    let measured = (|| {
        let stream = UnixStream::connect(&socket).map_err(|e| format!("connect to QMP: {e}"))?;
        stream
            .set_read_timeout(Some(CALL_DEADLINE))
            .map_err(|e| format!("QMP socket: {e}"))?;
        let mut writer = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let read = |reader: &mut BufReader<UnixStream>, line: &mut String| {
            line.clear();
            match reader.read_line(line) {
                Ok(0) => Err("QEMU closed its monitor".to_owned()),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("read from QMP: {e}")),
            }
        };
        read(&mut reader, &mut line)?;
        if !line.contains("\"QMP\"") {
            return Err(format!("not a QMP greeting: {line}"));
        }
        let greeting = began.elapsed();
        writer
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .map_err(|e| format!("write to QMP: {e}"))?;
        loop {
            read(&mut reader, &mut line)?;
            if line.contains("\"return\"") {
                return Ok((greeting, began.elapsed()));
            }
            if line.contains("\"error\"") {
                return Err(format!("qmp_capabilities failed: {line}"));
            }
        }
    })();
    let _ = child.kill();
    let output = child.wait_with_output();
    let _ = std::fs::remove_file(&socket);
    measured.map_err(|e| {
        let log = output
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        if log.is_empty() {
            e
        } else {
            format!("{e}; QEMU said: {log}")
        }
    })
}

/// p50 of `runs` raw QEMU starts (after one warm-up run): greeting, ready.
fn raw_qemu(dir: &Path, runs: usize) -> (Result<Duration, String>, Result<Duration, String>) {
    let measured = (|| {
        let qemu = find_qemu()?;
        raw_qemu_once(&qemu, dir)?;
        let mut greetings = Vec::with_capacity(runs);
        let mut readies = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (greeting, ready) = raw_qemu_once(&qemu, dir)?;
            greetings.push(greeting);
            readies.push(ready);
        }
        Ok::<_, String>((p50(&mut greetings), p50(&mut readies)))
    })();
    match measured {
        Ok((greeting, ready)) => (Ok(greeting), Ok(ready)),
        Err(e) => (Err(e.clone()), Err(e)),
    }
}

/// Kills (by pid) every QEMU whose command line mentions `root`: domains a failed run left
/// behind (virtqemud does not kill its VMs when it stops).
fn kill_leftover_qemus(root: &Path) {
    let root = root.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let program = cmdline.split('\0').next().unwrap_or_default();
        if program.contains("qemu") && cmdline.contains(&root) {
            eprintln!("qemu-bench: killing QEMU {pid} left running by the benchmark");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

async fn measure(socket: &Path, pid: u32, dir: &Path, domains: usize, starts: usize) -> Results {
    let mut results = Results {
        domains,
        starts,
        rss_idle: Err("not run".to_owned()),
        rss_idle_parts: Err("not run".to_owned()),
        define: Err("not run".to_owned()),
        undefine: Err("not run".to_owned()),
        rss_defined: Err("not run".to_owned()),
        list: Err("not run".to_owned()),
        start: Err("not run".to_owned()),
        destroy: Err("not run".to_owned()),
        raw_greeting: Err("not run".to_owned()),
        raw_ready: Err("not run".to_owned()),
    };
    let channel = match rvirt::transport::unix_channel(socket).await {
        Ok(channel) => Some(channel),
        Err(e) => {
            let why = format!("cannot connect to {}: {e}", socket.display());
            results.define = Err(why.clone());
            results.undefine = Err(why.clone());
            for row in [&mut results.list, &mut results.start, &mut results.destroy] {
                *row = Err(why.clone());
            }
            results.rss_defined = Err(why);
            None
        }
    };
    // virtqemud probes QEMU in the background after it is ready; GetCapabilities waits for
    // the probe, so no QEMU of the probe competes with what is measured next.
    if let Some(channel) = &channel {
        let mut host = HostServiceClient::new(channel.clone());
        if let Err(e) = host.get_capabilities(request(GetCapabilitiesRequest {})).await {
            eprintln!(
                "qemu-bench: GetCapabilities failed ({}); measuring anyway",
                e.message()
            );
        }
    }
    (results.raw_greeting, results.raw_ready) = raw_qemu(dir, starts);
    results.rss_idle = rss_kib(pid);
    results.rss_idle_parts = rss_breakdown(pid);
    let Some(channel) = channel else {
        return results;
    };
    let mut client = DomainServiceClient::new(channel);

    // Starts first, with nothing else defined, so that define/list measure a quiet daemon.
    (results.start, results.destroy) = start_destroy(&mut client, starts).await;

    match define_all(&mut client, domains).await {
        Ok((latencies, elapsed)) => {
            results.define = Ok(Series::of(&latencies, elapsed));
            results.rss_defined = rss_kib(pid);
            results.list = list_p50(&mut client, domains).await;
            results.undefine = undefine_all(&mut client, domains)
                .await
                .map(|(latencies, elapsed)| Series::of(&latencies, elapsed));
        }
        Err(why) => {
            results.rss_defined = Err(format!("no domains defined: {why}"));
            results.list = Err(format!("no domains defined: {why}"));
            results.undefine = Err(format!("no domains defined: {why}"));
            results.define = Err(why);
        }
    }
    results
}

/// One table row: what, rvirt's value, libvirt's, the target, whether it is met.
fn row(what: String, ours: String, theirs: String, target: String, met: Option<bool>) {
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "-",
    };
    println!("| {what} | {ours} | {theirs} | {target} | {met} |");
}

fn print(results: &Results) {
    let n = results.domains;
    let s = results.starts;
    let show_ms = |r: &Result<Duration, String>| match r {
        Ok(d) => format!("{:.2} ms", ms(*d)),
        Err(e) => format!("unavailable: {e}"),
    };
    let show_mib = |r: &Result<u64, String>| match r {
        Ok(kib) => format!("{:.1} MiB", *kib as f64 / 1024.0),
        Err(e) => format!("unavailable: {e}"),
    };
    let at_most = |r: &Result<Duration, String>, limit: f64| r.as_ref().ok().map(|d| ms(*d) <= limit);
    println!("virtqemud, one client, calls one at a time; {s} starts of a diskless q35 TCG domain (32 MiB)");
    println!();
    println!("| measure | rvirt | libvirt 11.3 | target | met |");
    println!("|---|---:|---:|---:|:---:|");

    let define_target = libvirt::DEFINE_MS / FACTOR;
    match &results.define {
        Ok(series) => row(
            format!("DefineDomainXml, mean of {}", series.count),
            format!("{:.3} ms ({:.0}/s)", ms(series.mean), series.rate),
            format!("{} ms", libvirt::DEFINE_MS),
            format!("≤ {define_target:.2} ms"),
            Some(ms(series.mean) <= define_target),
        ),
        Err(e) => row(
            format!("DefineDomainXml, mean of {n}"),
            format!("unavailable: {e}"),
            format!("{} ms", libvirt::DEFINE_MS),
            format!("≤ {define_target:.2} ms"),
            None,
        ),
    }
    match &results.undefine {
        Ok(series) => row(
            format!("UndefineDomain, mean of {}", series.count),
            format!("{:.3} ms ({:.0}/s)", ms(series.mean), series.rate),
            "-".into(),
            "-".into(),
            None,
        ),
        Err(e) => row(
            format!("UndefineDomain, mean of {n}"),
            format!("unavailable: {e}"),
            "-".into(),
            "-".into(),
            None,
        ),
    }
    let list_target = libvirt::LIST_MS / FACTOR;
    row(
        format!("ListDomains with {n} defined, p50 of {LIST_CALLS}"),
        show_ms(&results.list),
        format!("{} ms", libvirt::LIST_MS),
        format!("≤ {list_target:.2} ms"),
        at_most(&results.list, list_target),
    );
    let start_target = match &results.raw_ready {
        Ok(raw) => (libvirt::START_MS / FACTOR).min(ms(*raw) + START_OVERHEAD_MS),
        Err(_) => libvirt::START_MS / FACTOR,
    };
    let overhead = match (&results.start, &results.raw_ready) {
        (Ok(start), Ok(raw)) => format!(" (raw + {:.1} ms)", ms(*start) - ms(*raw)),
        _ => String::new(),
    };
    row(
        format!("StartDomain to RUNNING, p50 of {s}"),
        format!("{}{overhead}", show_ms(&results.start)),
        format!("{} ms", libvirt::START_MS),
        format!("≤ {start_target:.1} ms (≤ raw + {START_OVERHEAD_MS} ms)"),
        at_most(&results.start, start_target),
    );
    row(
        format!("raw QEMU: exec → QMP ready (`qmp_capabilities` answered), p50 of {s}"),
        show_ms(&results.raw_ready),
        format!("{} ms", libvirt::RAW_QEMU_MS),
        "reference".into(),
        None,
    );
    row(
        format!("raw QEMU: exec → QMP greeting, p50 of {s}"),
        show_ms(&results.raw_greeting),
        "-".into(),
        "reference".into(),
        None,
    );
    let destroy_target = libvirt::DESTROY_MS / FACTOR;
    row(
        format!("DestroyDomain, p50 of {s}"),
        show_ms(&results.destroy),
        format!("{} ms", libvirt::DESTROY_MS),
        format!("≤ {destroy_target:.1} ms"),
        at_most(&results.destroy, destroy_target),
    );
    let rss_target = libvirt::RSS_MB / FACTOR;
    row(
        "virtqemud RSS, idle".into(),
        match &results.rss_idle {
            Ok(kib) => format!(
                "{:.2} MiB ({:.2} MB)",
                *kib as f64 / 1024.0,
                *kib as f64 * 1024.0 / 1e6
            ),
            Err(e) => format!("unavailable: {e}"),
        },
        format!("{} MB", libvirt::RSS_MB),
        format!("≤ {rss_target:.1} MB"),
        results
            .rss_idle
            .as_ref()
            .ok()
            .map(|kib| (*kib as f64 * 1024.0) / 1e6 <= rss_target),
    );
    row(
        format!("virtqemud RSS, {n} defined"),
        show_mib(&results.rss_defined),
        "-".into(),
        "-".into(),
        None,
    );
    if let Ok(kib) = &results.rss_idle_parts {
        let mib = |k: u64| k as f64 / 1024.0;
        println!();
        println!(
            "idle RSS by mapping: virtqemud's code {:.2} MiB, the rest of its binary {:.2} MiB, other files (libc, libm, the loader) {:.2} MiB, anonymous {:.2} MiB",
            mib(kib[0]),
            mib(kib[1]),
            mib(kib[2]),
            mib(kib[3])
        );
    }
}

fn run(domains: usize, starts: usize, poll_us: Option<usize>) -> Result<(), String> {
    let root = tempfile::Builder::new()
        .prefix("rvirt-qemu-bench-")
        .tempdir()
        .map_err(|e| format!("temporary root: {e}"))?;
    if let Some(us) = poll_us {
        let etc = root.path().join("etc/rvirt");
        std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
        let file = etc.join(format!("{}.conf", SPEC.name));
        std::fs::write(&file, format!("busy_poll_us = {us}\n"))
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let scratch = root.path().join("bench");
    std::fs::create_dir(&scratch).map_err(|e| format!("scratch directory: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let results = {
        let daemon = rvirt_daemon::launch::start_ready(SPEC.name, root.path(), Duration::from_secs(30))?;
        // Where the daemon binds in this root: system mode for root, session mode otherwise.
        let mode = rvirt::paths::Mode::for_current_user();
        let env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let base = rvirt::paths::BaseDirs::from_env(mode, Some(root.path().to_path_buf()), &env);
        let socket =
            rvirt::paths::DaemonPaths::new(&base, mode, SPEC.name, SPEC.sockets, SPEC.driver).rw_socket;
        let results = runtime.block_on(measure(&socket, daemon.pid(), &scratch, domains, starts));
        drop(daemon);
        results
    };
    kill_leftover_qemus(root.path());
    print(&results);
    Ok(())
}

const USAGE: &str = "usage: qemu-bench [--domains N] [--starts N] [--poll-us N]";

fn main() -> ExitCode {
    let mut domains = 1000;
    let mut starts = 20;
    let mut poll_us = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--domains" | "--starts" => args
                .next()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0),
            "--poll-us" => args.next().and_then(|v| v.parse::<usize>().ok()),
            _ => None,
        };
        match (arg.as_str(), value) {
            ("--domains", Some(n)) => domains = n,
            ("--starts", Some(n)) => starts = n,
            ("--poll-us", Some(n)) => poll_us = Some(n),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(domains, starts, poll_us) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qemu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_domain_parses() {
        let xml = domain_xml("bench-00000");
        rvirt_conf::domain::DomainDef::parse(&xml, rvirt_conf::domain::ParseFlags::default())
            .unwrap_or_else(|e| panic!("the benchmark's domain XML does not parse: {e}\n{xml}"));
    }

    #[test]
    fn p50_is_the_middle_sample() {
        let mut samples = [3, 1, 2].map(Duration::from_millis);
        assert_eq!(p50(&mut samples), Duration::from_millis(2));
    }
}
