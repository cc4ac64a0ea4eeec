//! Domains: definitions, QEMU processes and their lifecycle.
//!
//! [`Domains`] owns every domain the driver knows. Each is a [`Vm`] with two locks:
//!
//! - `inner` (a plain mutex, never held across an `.await`): name, persistent definition,
//!   state and reason, and while it runs its live definition, QMP client and pidfd. Reads —
//!   lookup, list, info, state, XML, stats — take only this lock, so they never wait for a job.
//! - `job` (an async mutex): serializes the operations that change a domain (start, suspend,
//!   resume, shutdown, reboot, reset, define over it, undefine). Destroy does not wait for a
//!   running job: it kills QEMU first, as libvirt does, so a hung start can always be ended.
//!
//! One task per running domain reads QEMU's events and waits on its pidfd; state changes that
//! QEMU reports (a guest shutting down, pausing, panicking, exiting) are applied there, each with
//! libvirt's lifecycle event. A running domain has a status file (module [`status`]); when
//! virtqemud starts it adopts every QEMU those files name ([`Domains::init`]).

pub mod console;
mod modify;
pub mod process;
pub mod resources;
pub mod stats;
pub mod status;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rvirt_conf::domain::{
    ChrSource, Device, DomainDef, FormatFlags, LifecycleAction, ParseFlags, QemuDefaults, XmlEnum as _,
};
use rvirt_daemon::events::EventLog;
use rvirt_proto::error::status as rpc_status;
use rvirt_proto::v1::domain_lifecycle_event::Detail;
use rvirt_proto::v1::domain_state_reason::Reason;
use rvirt_proto::v1::*;
use tonic::Status;

use crate::caps::{QemuCaps, TargetQuery};
use crate::command::{MonitorFd, QemuCommandBuilder};
use crate::qmp::launch::QmpSocket;
use crate::qmp::{QmpClient, QmpError, QmpEvent, QmpEventKind, QmpEvents, QmpOptions};
use process::Pidfd;
use status::StatusFile;

pub use rvirt::domain::serve::DomainEventData;

/// How long destroy waits after SIGTERM before SIGKILL (libvirt waits 10 s).
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for a killed QEMU to be gone.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long QEMU may take from exec to its monitor greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the driver keeps its files.
#[derive(Debug, Clone)]
pub struct DomainPaths {
    /// Persistent definitions, `<name>.xml`.
    pub config: PathBuf,
    /// Autostart links, `autostart/<name>.xml`.
    pub autostart: PathBuf,
    /// Status files and per-domain runtime directories.
    pub state: PathBuf,
    /// QEMU logs, `<name>.log`.
    pub log: PathBuf,
}

impl DomainPaths {
    /// The layout under the driver's config, state and log directories.
    pub fn new(config: &Path, state: &Path, log: &Path) -> DomainPaths {
        DomainPaths {
            config: config.to_path_buf(),
            autostart: config.join("autostart"),
            state: state.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    fn config_file(&self, name: &str) -> PathBuf {
        self.config.join(config_file_name(name))
    }

    fn autostart_link(&self, name: &str) -> PathBuf {
        self.autostart.join(format!("{name}.xml"))
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.log.join(format!("{name}.log"))
    }

    fn runtime_dir(&self, id: u32, name: &str) -> PathBuf {
        let short: String = name.chars().take(20).collect();
        self.state.join(format!("domain-{id}-{short}"))
    }
}

/// The name of domain `name`'s definition file in the config directory.
fn config_file_name(name: &str) -> String {
    format!("{name}.xml")
}

/// Why the driver is stopping a running domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopIntent {
    /// Destroy.
    Destroyed,
    /// The guest shut down.
    Shutdown,
    /// The guest panicked and `on_crash` destroys it.
    Crashed,
    /// Start failed half-way.
    Failed,
}

/// A running domain's process.
#[derive(Debug)]
struct Run {
    id: u32,
    def: DomainDef,
    pidfd: Arc<Pidfd>,
    qmp: QmpClient,
    monitor: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    started: u64,
    intent: Option<StopIntent>,
    shutdown_seen: bool,
    fake_reboot: bool,
    /// The API is pausing/resuming: the matching QMP event is its echo, not news.
    api_pause: bool,
    api_resume: bool,
    /// Becomes true once the process is gone and the domain is shut off.
    stopped: tokio::sync::watch::Receiver<bool>,
    /// Network ports to release when the domain stops.
    ports: Vec<resources::PortRecord>,
    /// Open console streams, by device alias; dropping a sender closes that stream.
    consoles: HashMap<String, console::ConsoleHandle>,
    generation: u64,
}

/// The mutable part of a domain.
#[derive(Debug)]
struct Inner {
    name: String,
    config: Option<Arc<DomainDef>>,
    autostart: bool,
    state: DomainState,
    reason: Reason,
    run: Option<Run>,
}

/// One domain.
#[derive(Debug)]
pub struct Vm {
    uuid: String,
    job: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
}

impl Vm {
    fn new(uuid: String, name: String, config: Option<Arc<DomainDef>>) -> Vm {
        Vm {
            uuid,
            job: tokio::sync::Mutex::new(()),
            inner: Mutex::new(Inner {
                name,
                config,
                autostart: false,
                state: DomainState::Shutoff,
                reason: Reason::Shutoff(DomainShutoffReason::Unknown as i32),
                run: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The domain as the API describes it.
    pub fn describe(&self) -> Domain {
        let inner = self.lock();
        describe(&self.uuid, &inner)
    }

    fn identity(&self) -> DomainIdentity {
        let inner = self.lock();
        identity(&self.uuid, &inner)
    }
}

fn describe(uuid: &str, inner: &Inner) -> Domain {
    let def = inner.run.as_ref().map(|r| &r.def).or(inner.config.as_deref());
    Domain {
        name: inner.name.clone(),
        uuid: uuid.to_owned(),
        id: inner.run.as_ref().map(|r| r.id as i32).unwrap_or(-1),
        state: inner.state as i32,
        reason: Some(DomainStateReason {
            reason: Some(inner.reason),
        }),
        active: inner.run.is_some(),
        persistent: inner.config.is_some(),
        autostart: inner.autostart,
        has_managed_save: false,
        title: def.and_then(|d| d.title.clone()).unwrap_or_default(),
    }
}

fn identity(uuid: &str, inner: &Inner) -> DomainIdentity {
    DomainIdentity {
        name: inner.name.clone(),
        uuid: uuid.to_owned(),
        id: inner.run.as_ref().map(|r| r.id as i32).unwrap_or(-1),
    }
}

#[derive(Debug, Default)]
struct Registry {
    by_name: HashMap<String, Arc<Vm>>,
    uuid_to_name: HashMap<String, String>,
}

/// Every domain of the driver.
#[derive(Debug)]
pub struct Domains {
    caps: Arc<QemuCaps>,
    paths: DomainPaths,
    /// How to reach the other daemons (system or session).
    resource_ctx: resources::Context,
    registry: RwLock<Registry>,
    /// The domain event log.
    pub events: EventLog<DomainEventData>,
    next_id: AtomicU32,
    generation: std::sync::atomic::AtomicU64,
    this: Weak<Domains>,
    /// Where definition files go: the config directory's journal, opened by
    /// [`Domains::init`]; tests put a slow one.
    files: std::sync::OnceLock<Arc<dyn DefinitionFiles>>,
    /// Writes and removes the status files, off the worker threads.
    status_writer: status::StatusWriter,
}

/// How [`Domains`] keeps its definition files (`<name>.xml` in the config directory),
/// durably; called on a blocking thread.
pub trait DefinitionFiles: Send + Sync {
    /// Replaces or creates file `name` with `data` and file mode `mode`.
    fn put(&self, name: &str, data: &[u8], mode: u32) -> std::io::Result<()>;
    /// Removes file `name`; a missing file is not an error.
    fn remove(&self, name: &str) -> std::io::Result<()>;
    /// Called after a write's result went back to its caller: work that readies the next.
    fn prepare(&self) {}
}

impl DefinitionFiles for rvirt_daemon::journal::ConfigJournal {
    fn put(&self, name: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
        rvirt_daemon::journal::ConfigJournal::put(self, name, data, mode)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        rvirt_daemon::journal::ConfigJournal::remove(self, name)
    }

    fn prepare(&self) {
        rvirt_daemon::journal::ConfigJournal::prepare(self);
    }
}

impl std::fmt::Debug for dyn DefinitionFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DefinitionFiles")
    }
}

/// Errors: libvirt's codes, in the QEMU error domain.
fn err(code: ErrorCode, message: impl Into<String>) -> Status {
    rpc_status(code, ErrorDomain::Qemu, message.into())
}

fn not_running(name: &str) -> Status {
    err(
        ErrorCode::OperationInvalid,
        format!("Requested operation is not valid: domain '{name}' is not running"),
    )
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> Status {
    err(
        ErrorCode::OperationFailed,
        format!("Cannot {what} '{}': {e}", path.display()),
    )
}

fn lifecycle(kind: DomainEventType, detail: Detail) -> domain_event::Event {
    domain_event::Event::Lifecycle(DomainLifecycleEvent {
        r#type: kind as i32,
        detail: Some(detail),
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn reason_number(reason: &Reason) -> i32 {
    match *reason {
        Reason::Nostate(n)
        | Reason::Running(n)
        | Reason::Blocked(n)
        | Reason::Paused(n)
        | Reason::Shutdown(n)
        | Reason::Shutoff(n)
        | Reason::Crashed(n)
        | Reason::Pmsuspended(n) => n,
    }
}

fn reason_of(state: DomainState, number: i32) -> Reason {
    match state {
        DomainState::Nostate => Reason::Nostate(number),
        DomainState::Running => Reason::Running(number),
        DomainState::Blocked => Reason::Blocked(number),
        DomainState::Paused => Reason::Paused(number),
        DomainState::Shutdown => Reason::Shutdown(number),
        DomainState::Shutoff => Reason::Shutoff(number),
        DomainState::Crashed => Reason::Crashed(number),
        DomainState::Pmsuspended => Reason::Pmsuspended(number),
    }
}

/// The XML parse error as the API reports it.
pub fn xml_status(e: &rvirt_conf::xml::XmlError) -> Status {
    let code = match e.kind {
        rvirt_conf::XmlErrorKind::Unsupported => ErrorCode::ConfigUnsupported,
        _ => ErrorCode::XmlError,
    };
    rpc_status(code, ErrorDomain::Domain, format!("Invalid domain XML: {e}"))
}

impl Domains {
    /// A driver with no domains yet; [`Domains::init`] loads them.
    pub fn new(caps: Arc<QemuCaps>, paths: DomainPaths, resource_ctx: resources::Context) -> Arc<Domains> {
        let status_writer = status::StatusWriter::new(paths.state.clone());
        Arc::new_cyclic(|this| Domains {
            status_writer,
            caps,
            paths,
            resource_ctx,
            registry: RwLock::new(Registry::default()),
            events: EventLog::new(4096),
            next_id: AtomicU32::new(1),
            generation: std::sync::atomic::AtomicU64::new(1),
            this: this.clone(),
            files: std::sync::OnceLock::new(),
        })
    }

    /// The definition files; an error before [`Domains::init`] opened them.
    fn files(&self) -> Result<Arc<dyn DefinitionFiles>, Status> {
        self.files.get().cloned().ok_or_else(|| {
            err(
                ErrorCode::InternalError,
                "The definitions directory is not open yet",
            )
        })
    }

    /// Runs `f` with the definition files on a blocking thread: the worker threads go on
    /// serving other calls while the disk works. The thread readies the next write once the
    /// result is on its way.
    async fn with_files<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn DefinitionFiles) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let files = self.files()?;
        let (done, result) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = done.send(f(files.as_ref()));
            files.prepare();
        });
        result.await.map_err(|_| {
            err(
                ErrorCode::InternalError,
                "The definition writer failed before it answered",
            )
        })
    }

    fn arc(&self) -> Option<Arc<Domains>> {
        self.this.upgrade()
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, who: DomainIdentity, event: domain_event::Event) {
        self.events.emit((who, event));
    }

    /// The parse defaults: libvirt's for the host's emulator.
    fn defaults(&self) -> QemuDefaults {
        QemuDefaults::default()
    }

    /// Loads persistent definitions, adopts running QEMUs from their status files, and (in the
    /// background) starts the domains marked autostart.
    pub async fn init(self: &Arc<Self>) -> Result<(), String> {
        for dir in [
            &self.paths.config,
            &self.paths.autostart,
            &self.paths.state,
            &self.paths.log,
        ] {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        if self.files.get().is_none() {
            // Replays what a crash left in the journal before the files are read.
            let journal = rvirt_daemon::journal::ConfigJournal::open(&self.paths.config).map_err(|e| {
                format!(
                    "cannot open the definitions journal in {}: {e}",
                    self.paths.config.display()
                )
            })?;
            let _ = self.files.set(Arc::new(journal));
        }
        self.load_configs();
        self.adopt_running().await;
        let this = Arc::clone(self);
        tokio::spawn(async move { this.autostart().await });
        Ok(())
    }

    fn load_configs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.config) else {
            return;
        };
        let mut registry = self.registry_mut();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("xml") || !path.is_file() {
                continue;
            }
            let xml = match std::fs::read_to_string(&path) {
                Ok(xml) => xml,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot read a domain definition");
                    continue;
                }
            };
            let def = match DomainDef::parse_with(&xml, ParseFlags::default(), &self.defaults()) {
                Ok(def) => def,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot load a domain definition; it is left as it is");
                    continue;
                }
            };
            if path.file_stem().and_then(|s| s.to_str()) != Some(def.name.as_str()) {
                tracing::error!(path = %path.display(), name = %def.name, "domain definition file is not named after its domain; skipped");
                continue;
            }
            let vm = Vm::new(def.uuid.clone(), def.name.clone(), Some(Arc::new(def)));
            {
                let mut inner = vm.lock();
                inner.autostart = self.paths.autostart_link(&inner.name).exists();
            }
            let vm = Arc::new(vm);
            let name = vm.lock().name.clone();
            registry.uuid_to_name.insert(vm.uuid.clone(), name.clone());
            registry.by_name.insert(name, vm);
        }
    }

    /// Adopts the QEMU of every status file; a QEMU that is gone leaves its domain shut off
    /// (crashed), with an event.
    async fn adopt_running(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.state) else {
            return;
        };
        let mut max_id = 0;
        let files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("status"))
            .collect();
        for path in files {
            let status = match StatusFile::read(&path) {
                Ok(status) => status,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a status file; the domain is not adopted");
                    continue;
                }
            };
            max_id = max_id.max(status.id);
            self.adopt(status).await;
        }
        self.next_id.fetch_max(max_id + 1, Ordering::SeqCst);
    }

    async fn adopt(&self, status: StatusFile) {
        let vm = {
            let mut registry = self.registry_mut();
            match registry.by_name.get(&status.name) {
                Some(vm) if vm.uuid == status.uuid => Arc::clone(vm),
                Some(_) => {
                    tracing::error!(name = %status.name, "a status file names a domain whose UUID differs from its definition; not adopted");
                    return;
                }
                None => {
                    let vm = Arc::new(Vm::new(status.uuid.clone(), status.name.clone(), None));
                    registry
                        .uuid_to_name
                        .insert(status.uuid.clone(), status.name.clone());
                    registry.by_name.insert(status.name.clone(), Arc::clone(&vm));
                    vm
                }
            }
        };
        let def = match DomainDef::parse_with(&status.live_xml, ParseFlags::live(), &self.defaults()) {
            Ok(def) => def,
            Err(e) => {
                tracing::error!(name = %status.name, error = %e, "cannot parse the live XML of a running domain");
                self.adoption_failed(&vm, &status, "its live XML cannot be read");
                return;
            }
        };
        let pidfd = match Pidfd::open(status.pid) {
            Ok(pidfd) => Arc::new(pidfd),
            Err(_) => {
                self.adoption_failed(&vm, &status, "its QEMU process is gone");
                return;
            }
        };
        let options = QmpOptions {
            greeting_timeout: Duration::from_secs(10),
            ..QmpOptions::default()
        };
        let (qmp, events) = match QmpClient::connect(&status.monitor, options).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(name = %status.name, error = %e, "cannot reconnect to QEMU's monitor; killing it");
                let _ = pidfd.signal(libc::SIGKILL);
                let _ = tokio::time::timeout(KILL_WAIT, pidfd.exited()).await;
                self.adoption_failed(&vm, &status, "its monitor does not answer");
                return;
            }
        };
        let run_status = qmp.query_status().await;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let saved_state = DomainState::try_from(status.state).unwrap_or(DomainState::Running);
        {
            let mut inner = vm.lock();
            let (state, reason) = match &run_status {
                Ok(s) if s.running => {
                    let reason = if saved_state == DomainState::Running {
                        reason_of(DomainState::Running, status.reason)
                    } else {
                        Reason::Running(DomainRunningReason::Unpaused as i32)
                    };
                    (DomainState::Running, reason)
                }
                Ok(s) if s.status == crate::qmp::commands::RunState::Shutdown => (
                    DomainState::Shutdown,
                    Reason::Shutdown(DomainShutdownReason::User as i32),
                ),
                Ok(_) => {
                    let reason = if saved_state == DomainState::Paused {
                        reason_of(DomainState::Paused, status.reason)
                    } else {
                        Reason::Paused(DomainPausedReason::Unknown as i32)
                    };
                    (DomainState::Paused, reason)
                }
                Err(_) => (saved_state, reason_of(saved_state, status.reason)),
            };
            inner.state = state;
            inner.reason = reason;
            inner.run = Some(Run {
                id: status.id,
                def,
                pidfd: Arc::clone(&pidfd),
                qmp: qmp.clone(),
                monitor: status.monitor.clone(),
                dir: status.dir.clone(),
                log: status.log.clone(),
                started: status.started,
                intent: None,
                shutdown_seen: status.shutdown_seen,
                fake_reboot: status.fake_reboot,
                api_pause: false,
                api_resume: false,
                stopped: rx,
                ports: status.ports.clone(),
                consoles: HashMap::new(),
                generation,
            });
        }
        tracing::info!(name = %status.name, pid = status.pid, "adopted a running domain");
        self.save_status(&vm).await;
        if let Some(this) = self.arc() {
            tokio::spawn(this.watch_vm(Arc::clone(&vm), events, pidfd, tx, generation));
        }
        // A guest that shut down while nobody watched is stopped now.
        if matches!(&run_status, Ok(s) if s.status == crate::qmp::commands::RunState::Shutdown) {
            self.on_guest_shutdown(&vm, generation, true);
        }
    }

    fn adoption_failed(&self, vm: &Arc<Vm>, status: &StatusFile, why: &str) {
        tracing::warn!(name = %status.name, "domain {} stopped while virtqemud was not running: {why}", status.name);
        drop(self.status_writer.remove(&status.name));
        let _ = std::fs::remove_dir_all(&status.dir);
        if !status.ports.is_empty() {
            let ctx = self.resource_ctx;
            let ports = status.ports.clone();
            tokio::spawn(async move { resources::release(&ctx, ports).await });
        }
        let who = DomainIdentity {
            name: status.name.clone(),
            uuid: status.uuid.clone(),
            id: status.id as i32,
        };
        {
            let mut inner = vm.lock();
            inner.state = DomainState::Shutoff;
            inner.reason = Reason::Shutoff(DomainShutoffReason::Crashed as i32);
            inner.run = None;
        }
        self.emit(
            who,
            lifecycle(
                DomainEventType::Stopped,
                Detail::Stopped(DomainEventStoppedDetail::Failed as i32),
            ),
        );
        self.drop_if_transient(vm);
    }

    async fn autostart(&self) {
        let candidates: Vec<Arc<Vm>> = self
            .registry()
            .by_name
            .values()
            .filter(|vm| {
                let inner = vm.lock();
                inner.autostart && inner.run.is_none() && inner.config.is_some()
            })
            .cloned()
            .collect();
        for vm in candidates {
            let name = vm.lock().name.clone();
            match self.start(&vm, false).await {
                Ok(()) => tracing::info!(name = %name, "autostarted"),
                Err(e) => tracing::error!(name = %name, error = %e.message(), "cannot autostart"),
            }
        }
    }

    /// Why the daemon must not exit when idle.
    pub fn busy(&self) -> Option<String> {
        let running = self
            .registry()
            .by_name
            .values()
            .filter(|vm| vm.lock().run.is_some())
            .count();
        (running > 0).then(|| format!("{running} domain(s) running"))
    }

    // ----- lookup -----

    /// The domain a reference names.
    pub fn find(&self, domain: Option<&DomainRef>) -> Result<Arc<Vm>, Status> {
        let key = domain.and_then(|d| d.key.as_ref()).ok_or_else(|| {
            err(
                ErrorCode::InvalidArg,
                "No domain given: set the domain's name, UUID or id",
            )
        })?;
        let registry = self.registry();
        let found = match key {
            domain_ref::Key::Name(name) => registry.by_name.get(name).cloned(),
            domain_ref::Key::Uuid(uuid) => rvirt_conf::xml::canonical_uuid(uuid)
                .and_then(|u| registry.uuid_to_name.get(&u))
                .and_then(|n| registry.by_name.get(n))
                .cloned(),
            domain_ref::Key::Id(id) => registry
                .by_name
                .values()
                .find(|vm| vm.lock().run.as_ref().map(|r| r.id as i32) == Some(*id))
                .cloned(),
        };
        let vm = found.ok_or_else(|| {
            let what = match key {
                domain_ref::Key::Name(name) => format!("no domain with matching name '{name}'"),
                domain_ref::Key::Uuid(uuid) => format!("no domain with matching uuid '{uuid}'"),
                domain_ref::Key::Id(id) => format!("no domain with matching id {id}"),
            };
            err(ErrorCode::NoDomain, format!("Domain not found: {what}"))
        })?;
        // Access rules that name domains are decided here, whatever the caller named it by.
        rvirt_proto::access::authorize(&["domain"], &[&vm.lock().name, &vm.uuid])?;
        Ok(vm)
    }

    /// Every domain, sorted by name.
    pub fn all(&self) -> Vec<Arc<Vm>> {
        let registry = self.registry();
        let mut all: Vec<(String, Arc<Vm>)> = registry
            .by_name
            .iter()
            .map(|(n, vm)| (n.clone(), Arc::clone(vm)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(_, vm)| vm).collect()
    }

    // ----- definitions -----

    fn parse(&self, xml: &str) -> Result<DomainDef, Status> {
        DomainDef::parse_with(xml, ParseFlags::default(), &self.defaults()).map_err(|e| xml_status(&e))
    }

    /// Writes `def`'s file, durably, on a blocking thread, with no registry lock held.
    async fn save_config(&self, def: &DomainDef) -> Result<(), Status> {
        let xml = def.format(FormatFlags::default()).map_err(|e| {
            err(
                ErrorCode::InternalError,
                format!("Cannot format the definition: {e}"),
            )
        })?;
        let name = config_file_name(&def.name);
        let path = self.paths.config_file(&def.name);
        self.with_files(move |files| files.put(&name, xml.as_bytes(), 0o600))
            .await?
            .map_err(|e| io_error("save the definition to", &path, &e))
    }

    /// Removes domain `name`'s autostart link and definition file, durably, on a blocking
    /// thread.
    async fn remove_config(&self, name: &str) -> Result<(), Status> {
        let file = config_file_name(name);
        let path = self.paths.config_file(name);
        let link = self.paths.autostart_link(name);
        self.with_files(move |files| {
            if link.symlink_metadata().is_ok() {
                rvirt_daemon::atomic::remove_durable(&link).map_err(|e| io_error("remove", &link, &e))?;
            }
            files.remove(&file).map_err(|e| io_error("remove", &path, &e))
        })
        .await?
    }

    /// Defines (or redefines) a persistent domain.
    pub async fn define(&self, xml: &str) -> Result<Domain, Status> {
        let def = Arc::new(self.parse(xml)?);
        rvirt_proto::access::authorize(&["domain"], &[&def.name, &def.uuid])?;
        loop {
            let existing = self.check_identity(&def, true)?;
            if let Some(vm) = existing {
                let _job = vm.job.lock().await;
                // The domain may have been undefined while waiting for the job.
                if !self.is_registered(&vm) {
                    continue;
                }
                self.save_config(&def).await?;
                let domain = {
                    let mut inner = vm.lock();
                    inner.config = Some(Arc::clone(&def));
                    describe(&vm.uuid, &inner)
                };
                self.emit(
                    vm.identity(),
                    lifecycle(
                        DomainEventType::Defined,
                        Detail::Defined(DomainEventDefinedDetail::Updated as i32),
                    ),
                );
                return Ok(domain);
            }
            let vm = Arc::new(Vm::new(
                def.uuid.clone(),
                def.name.clone(),
                Some(Arc::clone(&def)),
            ));
            // The new domain holds its job until its file is on disk: a start, an undefine or
            // a redefine waits for it, lookups do not. As in libvirt, it is listed from now on
            // and removed again if its file cannot be written.
            let Ok(job) = vm.job.try_lock() else {
                continue;
            };
            {
                let mut registry = self.registry_mut();
                if registry.by_name.contains_key(&def.name) || registry.uuid_to_name.contains_key(&def.uuid) {
                    // Raced with another define of the same domain: go round again.
                    continue;
                }
                registry.uuid_to_name.insert(vm.uuid.clone(), def.name.clone());
                registry.by_name.insert(def.name.clone(), Arc::clone(&vm));
            }
            if let Err(e) = self.save_config(&def).await {
                let mut registry = self.registry_mut();
                if registry
                    .by_name
                    .get(&def.name)
                    .is_some_and(|v| Arc::ptr_eq(v, &vm))
                {
                    registry.by_name.remove(&def.name);
                    registry.uuid_to_name.remove(&vm.uuid);
                }
                return Err(e);
            }
            drop(job);
            self.emit(
                vm.identity(),
                lifecycle(
                    DomainEventType::Defined,
                    Detail::Defined(DomainEventDefinedDetail::Added as i32),
                ),
            );
            return Ok(vm.describe());
        }
    }

    fn is_registered(&self, vm: &Arc<Vm>) -> bool {
        let name = vm.lock().name.clone();
        self.registry()
            .by_name
            .get(&name)
            .is_some_and(|v| Arc::ptr_eq(v, vm))
    }

    /// libvirt's rules for a new definition against the existing ones: the same name must have
    /// the same UUID, and a UUID belongs to one name. Returns the domain it replaces.
    fn check_identity(&self, def: &DomainDef, redefine_active_ok: bool) -> Result<Option<Arc<Vm>>, Status> {
        let registry = self.registry();
        if let Some(vm) = registry.by_name.get(&def.name) {
            if vm.uuid != def.uuid {
                return Err(err(
                    ErrorCode::OperationFailed,
                    format!(
                        "Operation failed: domain '{}' is already defined with uuid {}",
                        def.name, vm.uuid
                    ),
                ));
            }
            if !redefine_active_ok && vm.lock().run.is_some() {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: domain '{}' is already active",
                        def.name
                    ),
                ));
            }
            return Ok(Some(Arc::clone(vm)));
        }
        if let Some(other) = registry.uuid_to_name.get(&def.uuid) {
            return Err(err(
                ErrorCode::OperationFailed,
                format!(
                    "Operation failed: domain '{other}' already exists with uuid {}",
                    def.uuid
                ),
            ));
        }
        Ok(None)
    }

    /// Removes a persistent definition; a running domain becomes transient.
    pub async fn undefine(&self, vm: &Arc<Vm>) -> Result<(), Status> {
        let _job = vm.job.lock().await;
        let (name, active) = {
            let inner = vm.lock();
            if inner.config.is_none() {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: cannot undefine transient domain '{}'",
                        inner.name
                    ),
                ));
            }
            (inner.name.clone(), inner.run.is_some())
        };
        self.remove_config(&name).await?;
        let who = {
            let mut inner = vm.lock();
            inner.config = None;
            inner.autostart = false;
            identity(&vm.uuid, &inner)
        };
        if !active {
            self.drop_if_transient(vm);
        } else {
            self.save_status(vm).await;
        }
        self.emit(
            who,
            lifecycle(
                DomainEventType::Undefined,
                Detail::Undefined(DomainEventUndefinedDetail::Removed as i32),
            ),
        );
        Ok(())
    }

    fn drop_if_transient(&self, vm: &Arc<Vm>) {
        let mut registry = self.registry_mut();
        let inner = vm.lock();
        if inner.config.is_none()
            && inner.run.is_none()
            && registry
                .by_name
                .get(&inner.name)
                .is_some_and(|v| Arc::ptr_eq(v, vm))
        {
            registry.by_name.remove(&inner.name);
            registry.uuid_to_name.remove(&vm.uuid);
        }
    }

    /// Marks a persistent domain to start with the daemon, or not.
    pub fn set_autostart(&self, vm: &Arc<Vm>, autostart: bool) -> Result<(), Status> {
        let name = {
            let inner = vm.lock();
            if inner.config.is_none() {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: cannot set autostart for transient domain '{}'",
                        inner.name
                    ),
                ));
            }
            inner.name.clone()
        };
        let link = self.paths.autostart_link(&name);
        if autostart {
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(self.paths.config_file(&name), &link)
                    .map_err(|e| io_error("create the autostart link", &link, &e))?;
            }
        } else if link.symlink_metadata().is_ok() {
            rvirt_daemon::atomic::remove_durable(&link).map_err(|e| io_error("remove", &link, &e))?;
        }
        vm.lock().autostart = autostart;
        Ok(())
    }

    // ----- reading -----

    /// The domain's XML: the live definition of a running domain unless `inactive` is asked.
    pub fn xml(&self, vm: &Vm, inactive: bool, secure: bool) -> Result<String, Status> {
        let inner = vm.lock();
        let (def, live) = match (&inner.run, &inner.config) {
            (Some(run), Some(config)) if inactive => (config.as_ref(), false),
            (Some(run), _) => (&run.def, true),
            (None, Some(config)) => (config.as_ref(), false),
            (None, None) => return Err(not_running(&inner.name)),
        };
        let flags = FormatFlags {
            inactive: !live,
            secure,
        };
        def.format(flags).map_err(|e| {
            err(
                ErrorCode::InternalError,
                format!("Cannot format the domain XML: {e}"),
            )
        })
    }

    /// State and reason.
    pub fn state(&self, vm: &Vm) -> (DomainState, Reason) {
        let inner = vm.lock();
        (inner.state, inner.reason)
    }

    /// `GetDomainInfo`.
    pub fn info(&self, vm: &Vm) -> GetDomainInfoResponse {
        let inner = vm.lock();
        let def = inner.run.as_ref().map(|r| &r.def).or(inner.config.as_deref());
        let cpu = inner
            .run
            .as_ref()
            .and_then(|r| process::cpu_time_ns(r.pidfd.pid()))
            .map(|(u, s)| u + s)
            .unwrap_or(0);
        GetDomainInfoResponse {
            state: inner.state as i32,
            max_memory_kib: def.map(|d| d.memory.total_kib).unwrap_or(0),
            memory_kib: def
                .map(|d| {
                    if inner.run.is_some() {
                        d.memory.current_kib
                    } else {
                        d.memory.total_kib
                    }
                })
                .unwrap_or(0),
            nr_virt_cpu: def.map(|d| d.vcpu.current.unwrap_or(d.vcpu.count)).unwrap_or(0),
            cpu_time_ns: cpu,
        }
    }

    // ----- lifecycle -----

    /// Starts a defined domain.
    pub async fn start(&self, vm: &Arc<Vm>, paused: bool) -> Result<(), Status> {
        let _job = vm.job.lock().await;
        let def = {
            let inner = vm.lock();
            if inner.run.is_some() {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: domain '{}' is already running",
                        inner.name
                    ),
                ));
            }
            match &inner.config {
                Some(config) => DomainDef::clone(config),
                None => return Err(not_running(&inner.name)),
            }
        };
        self.launch(vm, def, paused).await
    }

    /// Creates and starts a transient domain (or starts an inactive persistent one with this
    /// definition as its live one).
    pub async fn create(&self, xml: &str, paused: bool) -> Result<Arc<Vm>, Status> {
        let def = self.parse(xml)?;
        rvirt_proto::access::authorize(&["domain"], &[&def.name, &def.uuid])?;
        let vm = match self.check_identity(&def, false)? {
            Some(vm) => vm,
            None => {
                let mut registry = self.registry_mut();
                if registry.by_name.contains_key(&def.name) || registry.uuid_to_name.contains_key(&def.uuid) {
                    return Err(err(
                        ErrorCode::OperationInvalid,
                        format!(
                            "Requested operation is not valid: domain '{}' is being defined",
                            def.name
                        ),
                    ));
                }
                let vm = Arc::new(Vm::new(def.uuid.clone(), def.name.clone(), None));
                registry.uuid_to_name.insert(def.uuid.clone(), def.name.clone());
                registry.by_name.insert(def.name.clone(), Arc::clone(&vm));
                vm
            }
        };
        let result = {
            let _job = vm.job.lock().await;
            if vm.lock().run.is_some() {
                Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: domain '{}' is already active",
                        def.name
                    ),
                ))
            } else {
                self.launch(&vm, def, paused).await
            }
        };
        match result {
            Ok(()) => Ok(vm),
            Err(e) => {
                self.drop_if_transient(&vm);
                Err(e)
            }
        }
    }

    /// Starts QEMU for `def` (the job is held).
    async fn launch(&self, vm: &Arc<Vm>, mut def: DomainDef, paused: bool) -> Result<(), Status> {
        let name = def.name.clone();
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        def.id = Some(id);
        def.assign_usb_addresses().map_err(|e| xml_status(&e))?;
        crate::command::assign_aliases(&mut def);
        let query = TargetQuery {
            emulator: def.devices.emulator.as_ref().map(PathBuf::from),
            arch: def.os.arch.clone(),
            machine: def.os.machine.clone(),
            virt_type: Some(def.virt_type.as_str().to_owned()),
        };
        let target = self.caps.resolve(&query).await.map_err(|e| match e {
            crate::caps::CapsError::InvalidArg(m) => err(
                ErrorCode::ConfigUnsupported,
                format!("Unsupported configuration: {m}"),
            ),
            other => crate::caps_status(&other),
        })?;
        let dir = self.paths.runtime_dir(id, &name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, &e))?;
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let cleanup_dir = |dir: &Path| {
            let _ = std::fs::remove_dir_all(dir);
        };
        // `unix` chardevs without a path get one in the runtime directory; the live XML says
        // which.
        for device in &mut def.devices.list {
            if let Device::Serial(c) | Device::Console(c) = device
                && let ChrSource::Unix {
                    path: path @ None, ..
                } = &mut c.source
            {
                let alias = c.info.alias.clone().unwrap_or_default();
                *path = Some(
                    crate::command::default_unix_socket(&dir, &alias)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        let monitor_path = dir.join("monitor.sock");
        let mut socket = match QmpSocket::bind(&monitor_path) {
            Ok(socket) => socket,
            Err(e) => {
                cleanup_dir(&dir);
                return Err(io_error("create the monitor socket", &monitor_path, &e));
            }
        };
        let Some(monitor_fd) = socket.listener_fd() else {
            cleanup_dir(&dir);
            return Err(err(
                ErrorCode::InternalError,
                "The monitor socket is not listening",
            ));
        };
        let mut prepared = match resources::prepare(&mut def, &dir, &self.resource_ctx).await {
            Ok(prepared) => prepared,
            Err(e) => {
                cleanup_dir(&dir);
                return Err(e);
            }
        };
        prepared.resources.start_time = i64::try_from(now_secs()).ok();
        let ports = std::mem::take(&mut prepared.ports);
        let resource_ctx = self.resource_ctx;
        let release_ports = |ports: Vec<resources::PortRecord>| async move {
            if !ports.is_empty() {
                resources::release(&resource_ctx, ports).await;
            }
        };
        let command =
            match QemuCommandBuilder::new(&def, &target, &dir, MonitorFd(monitor_fd), &prepared.resources)
                .build()
            {
                Ok(command) => command,
                Err(e) => {
                    cleanup_dir(&dir);
                    release_ports(ports).await;
                    return Err(match e {
                        crate::command::CommandError::Unsupported(m) => err(
                            ErrorCode::ConfigUnsupported,
                            format!("Unsupported configuration: {m}"),
                        ),
                        crate::command::CommandError::Unresolved(m) => err(ErrorCode::OperationFailed, m),
                    });
                }
            };
        let log = self.paths.log_file(&name);
        let mut inherit = prepared.inherited();
        inherit.push(monitor_fd);
        let spawned = process::spawn(&command.program, &command.args, &command.env, &log, &inherit);
        // QEMU holds the tap devices now (or nobody does): close this daemon's copies.
        drop(prepared);
        let (pid, pidfd) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                cleanup_dir(&dir);
                release_ports(ports.clone()).await;
                return Err(err(
                    ErrorCode::OperationFailed,
                    format!("Cannot start QEMU '{}': {e}", command.program.display()),
                ));
            }
        };
        socket.release();
        let pidfd = Arc::new(pidfd);
        let fail = |message: String| {
            let pidfd = Arc::clone(&pidfd);
            let dir = dir.clone();
            let log = log.clone();
            let ports = ports.clone();
            async move {
                let _ = pidfd.signal(libc::SIGKILL);
                let _ = tokio::time::timeout(KILL_WAIT, pidfd.exited()).await;
                let _ = std::fs::remove_dir_all(&dir);
                if !ports.is_empty() {
                    resources::release(&resource_ctx, ports).await;
                }
                let tail = process::log_tail(&log, 5);
                let detail = if tail.is_empty() {
                    String::new()
                } else {
                    format!("\n{tail}")
                };
                err(ErrorCode::InternalError, format!("{message}{detail}"))
            }
        };
        let options = QmpOptions {
            greeting_timeout: GREETING_TIMEOUT,
            ..QmpOptions::default()
        };
        // A QEMU that stops answering: what its threads were doing, read before it is killed.
        let stalled = |e: &QmpError| {
            crate::qmp::launch::stalled(e, pid)
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        let (qmp, events) = match socket.connect(options).await {
            Ok(pair) => pair,
            Err(e) => {
                let threads = stalled(&e);
                return Err(fail(format!("QEMU for domain '{name}' did not start: {e}{threads}")).await);
            }
        };
        if let Err(e) = fill_ptys(&qmp, &mut def).await {
            let threads = stalled(&e);
            return Err(fail(format!("Cannot query QEMU's character devices: {e}{threads}")).await);
        }
        if let Err(e) = fill_vnc_port(&qmp, &mut def).await {
            let threads = stalled(&e);
            return Err(fail(format!("Cannot query QEMU's VNC server: {e}{threads}")).await);
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        {
            let mut inner = vm.lock();
            inner.state = DomainState::Paused;
            inner.reason = Reason::Paused(DomainPausedReason::StartingUp as i32);
            inner.run = Some(Run {
                id,
                def,
                pidfd: Arc::clone(&pidfd),
                qmp: qmp.clone(),
                monitor: monitor_path,
                dir: dir.clone(),
                log: log.clone(),
                started: now_secs(),
                intent: None,
                shutdown_seen: false,
                fake_reboot: false,
                api_pause: false,
                api_resume: !paused,
                stopped: rx,
                ports: ports.clone(),
                consoles: HashMap::new(),
                generation,
            });
        }
        if !paused && let Err(e) = qmp.cont().await {
            {
                {
                    let mut inner = vm.lock();
                    if let Some(run) = inner.run.as_mut() {
                        run.intent = Some(StopIntent::Failed);
                        // `fail` releases them.
                        run.ports.clear();
                    }
                }
                let message = fail(format!("Cannot start the guest's CPUs: {e}")).await;
                if let Some(removed) = self.finish(vm, generation) {
                    let _ = removed.wait().await;
                }
                let _ = tx.send(true);
                return Err(message);
            }
        }
        let who = {
            let mut inner = vm.lock();
            if paused {
                inner.reason = Reason::Paused(DomainPausedReason::User as i32);
            } else {
                inner.state = DomainState::Running;
                inner.reason = Reason::Running(DomainRunningReason::Booted as i32);
            }
            identity(&vm.uuid, &inner)
        };
        self.save_status(vm).await;
        self.emit(
            who.clone(),
            lifecycle(
                DomainEventType::Started,
                Detail::Started(DomainEventStartedDetail::Booted as i32),
            ),
        );
        if paused {
            self.emit(
                who,
                lifecycle(
                    DomainEventType::Suspended,
                    Detail::Suspended(DomainEventSuspendedDetail::Paused as i32),
                ),
            );
        }
        tracing::info!(name = %name, pid, "domain started");
        if let Some(this) = self.arc() {
            tokio::spawn(this.watch_vm(Arc::clone(vm), events, pidfd, tx, generation));
        }
        Ok(())
    }

    fn status_of(&self, vm: &Vm) -> Result<StatusFile, Status> {
        let inner = vm.lock();
        let run = inner.run.as_ref().ok_or_else(|| not_running(&inner.name))?;
        let live_xml = run.def.format(FormatFlags::live()).map_err(|e| {
            err(
                ErrorCode::InternalError,
                format!("Cannot format the live XML: {e}"),
            )
        })?;
        Ok(StatusFile {
            version: status::STATUS_VERSION,
            name: inner.name.clone(),
            uuid: vm.uuid.clone(),
            id: run.id,
            pid: run.pidfd.pid(),
            monitor: run.monitor.clone(),
            dir: run.dir.clone(),
            log: run.log.clone(),
            live_xml,
            state: inner.state as i32,
            reason: reason_number(&inner.reason),
            transient: inner.config.is_none(),
            shutdown_seen: run.shutdown_seen,
            fake_reboot: run.fake_reboot,
            started: run.started,
            ports: run.ports.clone(),
        })
    }

    /// Records `vm`'s state in its status file without waiting for the disk (the writer
    /// logs a failure): for changes QEMU reported, which no caller waits on.
    fn write_status(&self, vm: &Vm) {
        if let Ok(status) = self.status_of(vm) {
            drop(self.status_writer.write(status));
        }
    }

    /// Records `vm`'s state in its status file and waits until it is on disk: before an
    /// answer that a restarted daemon must be able to rely on.
    async fn save_status(&self, vm: &Vm) {
        if let Ok(status) = self.status_of(vm) {
            // A failure is logged by the writer; the domain runs on either way.
            let _ = self.status_writer.write(status).wait().await;
        }
    }

    /// Reads QEMU's events and waits for its exit; applies what they mean.
    async fn watch_vm(
        self: Arc<Self>,
        vm: Arc<Vm>,
        mut events: QmpEvents,
        pidfd: Arc<Pidfd>,
        stopped: tokio::sync::watch::Sender<bool>,
        generation: u64,
    ) {
        let mut monitor_open = true;
        loop {
            tokio::select! {
                event = events.next(), if monitor_open => match event {
                    Some(Ok(event)) => self.on_event(&vm, generation, event),
                    Some(Err(_)) | None => monitor_open = false,
                },
                () = pidfd.exited() => break,
            }
            if !monitor_open {
                // QEMU closes its monitor only when it exits; make sure it does.
                if tokio::time::timeout(KILL_WAIT, pidfd.exited()).await.is_err() {
                    tracing::warn!(
                        pid = pidfd.pid(),
                        "QEMU closed its monitor but did not exit; killing it"
                    );
                    let _ = pidfd.signal(libc::SIGKILL);
                    pidfd.exited().await;
                }
                break;
            }
        }
        // Network ports go back before the stop is announced, so whoever sees the domain
        // shut off also sees its ports gone.
        let ports = {
            let mut inner = vm.lock();
            inner
                .run
                .as_mut()
                .filter(|r| r.generation == generation)
                .map(|r| std::mem::take(&mut r.ports))
                .unwrap_or_default()
        };
        if !ports.is_empty() {
            resources::release(&self.resource_ctx, ports).await;
        }
        // Whoever waits for the stop (a destroy) answers once the status file is gone.
        if let Some(removed) = self.finish(&vm, generation) {
            let _ = removed.wait().await;
        }
        let _ = stopped.send(true);
    }

    /// The process of `generation` is gone: the domain is shut off, with the reason the
    /// driver's intent or QEMU's last events give.
    /// Returns the removal of its status file, on its way to the disk.
    fn finish(&self, vm: &Arc<Vm>, generation: u64) -> Option<status::Pending> {
        let (who, detail, dir, ports) = {
            let mut inner = vm.lock();
            let run = inner.run.as_ref()?;
            if run.generation != generation {
                return None;
            }
            let (reason, detail) = match run.intent {
                Some(StopIntent::Destroyed) => (
                    DomainShutoffReason::Destroyed,
                    DomainEventStoppedDetail::Destroyed,
                ),
                Some(StopIntent::Shutdown) => {
                    (DomainShutoffReason::Shutdown, DomainEventStoppedDetail::Shutdown)
                }
                Some(StopIntent::Crashed) => {
                    (DomainShutoffReason::Crashed, DomainEventStoppedDetail::Crashed)
                }
                Some(StopIntent::Failed) => (DomainShutoffReason::Failed, DomainEventStoppedDetail::Failed),
                None if run.shutdown_seen => {
                    (DomainShutoffReason::Shutdown, DomainEventStoppedDetail::Shutdown)
                }
                None => (DomainShutoffReason::Crashed, DomainEventStoppedDetail::Failed),
            };
            let who = identity(&vm.uuid, &inner);
            let dir = run.dir.clone();
            let ports = run.ports.clone();
            inner.state = DomainState::Shutoff;
            inner.reason = Reason::Shutoff(reason as i32);
            // Dropping the run closes its consoles and the monitor connection.
            inner.run = None;
            (who, detail, dir, ports)
        };
        if !ports.is_empty() {
            let ctx = self.resource_ctx;
            tokio::spawn(async move { resources::release(&ctx, ports).await });
        }
        let removed = self.status_writer.remove(&who.name);
        let _ = std::fs::remove_dir_all(&dir);
        self.emit(
            who.clone(),
            lifecycle(DomainEventType::Stopped, Detail::Stopped(detail as i32)),
        );
        tracing::info!(name = %who.name, ?detail, "domain stopped");
        self.drop_if_transient(vm);
        Some(removed)
    }

    fn on_event(&self, vm: &Arc<Vm>, generation: u64, event: QmpEvent) {
        match event.kind {
            QmpEventKind::Shutdown { guest, .. } => self.on_guest_shutdown(vm, generation, guest),
            QmpEventKind::Stop => {
                let who = {
                    let mut inner = vm.lock();
                    let Some(run) = inner.run.as_mut().filter(|r| r.generation == generation) else {
                        return;
                    };
                    if run.api_pause {
                        run.api_pause = false;
                        return;
                    }
                    if run.shutdown_seen || run.intent.is_some() || inner.state != DomainState::Running {
                        return;
                    }
                    inner.state = DomainState::Paused;
                    inner.reason = Reason::Paused(DomainPausedReason::Unknown as i32);
                    identity(&vm.uuid, &inner)
                };
                self.write_status(vm);
                self.emit(
                    who,
                    lifecycle(
                        DomainEventType::Suspended,
                        Detail::Suspended(DomainEventSuspendedDetail::Paused as i32),
                    ),
                );
            }
            QmpEventKind::Resume => {
                let who = {
                    let mut inner = vm.lock();
                    let Some(run) = inner.run.as_mut().filter(|r| r.generation == generation) else {
                        return;
                    };
                    if run.api_resume {
                        run.api_resume = false;
                        return;
                    }
                    if inner.state != DomainState::Paused {
                        return;
                    }
                    inner.state = DomainState::Running;
                    inner.reason = Reason::Running(DomainRunningReason::Unpaused as i32);
                    identity(&vm.uuid, &inner)
                };
                self.write_status(vm);
                self.emit(
                    who,
                    lifecycle(
                        DomainEventType::Resumed,
                        Detail::Resumed(DomainEventResumedDetail::Unpaused as i32),
                    ),
                );
            }
            QmpEventKind::Reset { .. } => {
                let who = {
                    let inner = vm.lock();
                    if inner.run.as_ref().is_none_or(|r| r.generation != generation) {
                        return;
                    }
                    identity(&vm.uuid, &inner)
                };
                self.emit(who, domain_event::Event::Reboot(DomainRebootEvent {}));
            }
            QmpEventKind::GuestPanicked { .. } => {
                let (who, action, pidfd) = {
                    let mut inner = vm.lock();
                    let Some(run) = inner.run.as_mut().filter(|r| r.generation == generation) else {
                        return;
                    };
                    let action = run.def.on_crash;
                    let pidfd = Arc::clone(&run.pidfd);
                    if matches!(action, LifecycleAction::Destroy) {
                        run.intent = Some(StopIntent::Crashed);
                    }
                    inner.state = DomainState::Crashed;
                    inner.reason = Reason::Crashed(DomainCrashedReason::Panicked as i32);
                    (identity(&vm.uuid, &inner), action, pidfd)
                };
                self.write_status(vm);
                self.emit(
                    who,
                    lifecycle(
                        DomainEventType::Crashed,
                        Detail::Crashed(DomainEventCrashedDetail::Panicked as i32),
                    ),
                );
                if matches!(action, LifecycleAction::Destroy) {
                    let _ = pidfd.signal(libc::SIGTERM);
                }
            }
            QmpEventKind::BalloonChange { actual } => {
                let who = {
                    let mut inner = vm.lock();
                    let Some(run) = inner.run.as_mut().filter(|r| r.generation == generation) else {
                        return;
                    };
                    run.def.memory.current_kib = actual / 1024;
                    identity(&vm.uuid, &inner)
                };
                self.emit(
                    who,
                    domain_event::Event::BalloonChange(DomainBalloonChangeEvent {
                        actual_kib: actual / 1024,
                    }),
                );
            }
            _ => {}
        }
    }

    /// QEMU reported that the guest shut down (it is paused, thanks to `-no-shutdown`): a
    /// pending reboot resets it; otherwise `on_poweroff` decides (destroy by default).
    fn on_guest_shutdown(&self, vm: &Arc<Vm>, generation: u64, guest: bool) {
        enum Next {
            Reboot(QmpClient),
            Quit(QmpClient, Arc<Pidfd>),
        }
        let (who, next) = {
            let mut inner = vm.lock();
            let Some(run) = inner.run.as_mut().filter(|r| r.generation == generation) else {
                return;
            };
            let restart = run.fake_reboot
                || (run.intent.is_none()
                    && matches!(
                        run.def.on_poweroff,
                        LifecycleAction::Restart | LifecycleAction::RenameRestart
                    ));
            if restart && run.intent.is_none() {
                run.fake_reboot = false;
                run.api_resume = true;
                (None, Next::Reboot(run.qmp.clone()))
            } else {
                run.shutdown_seen = true;
                if run.intent.is_none() {
                    run.intent = Some(StopIntent::Shutdown);
                }
                let next = Next::Quit(run.qmp.clone(), Arc::clone(&run.pidfd));
                inner.state = DomainState::Shutdown;
                inner.reason = Reason::Shutdown(DomainShutdownReason::User as i32);
                (Some(identity(&vm.uuid, &inner)), next)
            }
        };
        self.write_status(vm);
        if let Some(who) = who {
            let detail = if guest {
                DomainEventShutdownDetail::Guest
            } else {
                DomainEventShutdownDetail::Host
            };
            self.emit(
                who,
                lifecycle(DomainEventType::Shutdown, Detail::Shutdown(detail as i32)),
            );
        }
        match next {
            Next::Reboot(qmp) => {
                tokio::spawn(async move {
                    if qmp.system_reset().await.is_ok() {
                        let _ = qmp.cont().await;
                    }
                });
            }
            Next::Quit(qmp, pidfd) => {
                tokio::spawn(async move {
                    if qmp.quit().await.is_err() {
                        let _ = pidfd.signal(libc::SIGTERM);
                    }
                    if tokio::time::timeout(TERM_GRACE, pidfd.exited()).await.is_err() {
                        let _ = pidfd.signal(libc::SIGKILL);
                    }
                });
            }
        }
    }

    /// Destroy: SIGTERM, SIGKILL after a grace period (unless `graceful`), and wait for the
    /// process to be gone. Does not wait for a running job.
    pub async fn destroy(&self, vm: &Arc<Vm>, graceful: bool) -> Result<(), Status> {
        let (pidfd, mut stopped, name) = {
            let mut inner = vm.lock();
            let name = inner.name.clone();
            let run = inner.run.as_mut().ok_or_else(|| not_running(&name))?;
            run.intent = Some(StopIntent::Destroyed);
            (Arc::clone(&run.pidfd), run.stopped.clone(), name)
        };
        let wait = |stopped: &mut tokio::sync::watch::Receiver<bool>, limit: Duration| {
            let mut stopped = stopped.clone();
            async move {
                tokio::time::timeout(limit, stopped.wait_for(|s| *s))
                    .await
                    .is_ok()
            }
        };
        pidfd.signal(libc::SIGTERM).map_err(|e| {
            err(
                ErrorCode::OperationFailed,
                format!("Cannot signal QEMU of '{name}': {e}"),
            )
        })?;
        if wait(&mut stopped, TERM_GRACE).await {
            return Ok(());
        }
        if graceful {
            return Err(err(
                ErrorCode::OperationFailed,
                format!(
                    "Operation failed: QEMU of domain '{name}' did not exit within {TERM_GRACE:?} of SIGTERM"
                ),
            ));
        }
        let _ = pidfd.signal(libc::SIGKILL);
        if wait(&mut stopped, KILL_WAIT).await {
            return Ok(());
        }
        Err(err(
            ErrorCode::OperationFailed,
            format!("Operation failed: QEMU of domain '{name}' did not exit after SIGKILL"),
        ))
    }

    fn running_qmp(&self, vm: &Vm) -> Result<QmpClient, Status> {
        let inner = vm.lock();
        inner
            .run
            .as_ref()
            .filter(|r| r.intent.is_none())
            .map(|r| r.qmp.clone())
            .ok_or_else(|| not_running(&inner.name))
    }

    fn qmp_failed(name: &str, what: &str, e: &crate::qmp::QmpError) -> Status {
        err(
            ErrorCode::OperationFailed,
            format!("Cannot {what} domain '{name}': {e}"),
        )
    }

    /// ACPI power button (the guest decides).
    pub async fn shutdown(&self, vm: &Arc<Vm>) -> Result<(), Status> {
        let _job = vm.job.lock().await;
        let qmp = self.running_qmp(vm)?;
        let name = vm.lock().name.clone();
        qmp.system_powerdown()
            .await
            .map_err(|e| Self::qmp_failed(&name, "shut down", &e))
    }

    /// Reboot through the guest: a power button press whose shutdown becomes a reset.
    pub async fn reboot(&self, vm: &Arc<Vm>) -> Result<(), Status> {
        let _job = vm.job.lock().await;
        let qmp = self.running_qmp(vm)?;
        let name = {
            let mut inner = vm.lock();
            if let Some(run) = inner.run.as_mut() {
                run.fake_reboot = true;
            }
            inner.name.clone()
        };
        self.save_status(vm).await;
        qmp.system_powerdown()
            .await
            .map_err(|e| Self::qmp_failed(&name, "reboot", &e))
    }

    /// Hard reset.
    pub async fn reset(&self, vm: &Arc<Vm>) -> Result<(), Status> {
        let _job = vm.job.lock().await;
        let qmp = self.running_qmp(vm)?;
        let name = vm.lock().name.clone();
        qmp.system_reset()
            .await
            .map_err(|e| Self::qmp_failed(&name, "reset", &e))
    }

    /// Pauses the vCPUs.
    pub async fn suspend(&self, vm: &Arc<Vm>) -> Result<(), Status> {
        let _job = vm.job.lock().await;
        let qmp = self.running_qmp(vm)?;
        let name = {
            let mut inner = vm.lock();
            if inner.state == DomainState::Paused {
                // libvirt accepts suspending a paused domain and changes nothing.
                return Ok(());
            }
            if let Some(run) = inner.run.as_mut() {
                run.api_pause = true;
            }
            inner.name.clone()
        };
        if let Err(e) = qmp.stop().await {
            if let Some(run) = vm.lock().run.as_mut() {
                run.api_pause = false;
            }
            return Err(Self::qmp_failed(&name, "suspend", &e));
        }
        let who = {
            let mut inner = vm.lock();
            if inner.run.is_none() {
                return Err(not_running(&name));
            }
            inner.state = DomainState::Paused;
            inner.reason = Reason::Paused(DomainPausedReason::User as i32);
            identity(&vm.uuid, &inner)
        };
        self.save_status(vm).await;
        self.emit(
            who,
            lifecycle(
                DomainEventType::Suspended,
                Detail::Suspended(DomainEventSuspendedDetail::Paused as i32),
            ),
        );
        Ok(())
    }

    /// Runs paused vCPUs again.
    pub async fn resume(&self, vm: &Arc<Vm>) -> Result<(), Status> {
        let _job = vm.job.lock().await;
        let qmp = self.running_qmp(vm)?;
        let name = {
            let mut inner = vm.lock();
            if inner.state != DomainState::Paused {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: domain '{}' is not paused",
                        inner.name
                    ),
                ));
            }
            if let Some(run) = inner.run.as_mut() {
                run.api_resume = true;
            }
            inner.name.clone()
        };
        if let Err(e) = qmp.cont().await {
            if let Some(run) = vm.lock().run.as_mut() {
                run.api_resume = false;
            }
            return Err(Self::qmp_failed(&name, "resume", &e));
        }
        let who = {
            let mut inner = vm.lock();
            if inner.run.is_none() {
                return Err(not_running(&name));
            }
            inner.state = DomainState::Running;
            inner.reason = Reason::Running(DomainRunningReason::Unpaused as i32);
            identity(&vm.uuid, &inner)
        };
        self.save_status(vm).await;
        self.emit(
            who,
            lifecycle(
                DomainEventType::Resumed,
                Detail::Resumed(DomainEventResumedDetail::Unpaused as i32),
            ),
        );
        Ok(())
    }

    /// The QMP client and live definition of a running domain, for stats and consoles.
    fn live(&self, vm: &Vm) -> Option<(QmpClient, DomainDef, u32)> {
        let inner = vm.lock();
        inner
            .run
            .as_ref()
            .map(|r| (r.qmp.clone(), r.def.clone(), r.pidfd.pid()))
    }
}

/// Fills the pty paths QEMU allocated into the live definition (`query-chardev`).
async fn fill_ptys(qmp: &QmpClient, def: &mut DomainDef) -> Result<(), crate::qmp::QmpError> {
    let needs = def.devices.list.iter().any(
        |d| matches!(d, Device::Serial(c) | Device::Console(c) if matches!(c.source, ChrSource::Pty { .. })),
    );
    if !needs {
        return Ok(());
    }
    let chardevs = qmp.execute_raw("query-chardev", serde_json::Value::Null).await?;
    let mut ptys = HashMap::new();
    if let Some(list) = chardevs.as_array() {
        for entry in list {
            let label = entry.get("label").and_then(|v| v.as_str());
            let filename = entry.get("filename").and_then(|v| v.as_str());
            if let (Some(label), Some(filename)) = (label, filename)
                && let Some(path) = filename.strip_prefix("pty:")
            {
                ptys.insert(label.to_owned(), path.to_owned());
            }
        }
    }
    let mut serial_paths: Vec<Option<String>> = Vec::new();
    for device in &mut def.devices.list {
        match device {
            Device::Serial(c) => {
                let alias = c.info.alias.clone().unwrap_or_default();
                let path = ptys.get(&format!("char{alias}")).cloned();
                if let ChrSource::Pty { path: p } = &mut c.source {
                    *p = path.clone();
                }
                serial_paths.push(path);
            }
            Device::Console(c) => {
                let alias = c.info.alias.clone().unwrap_or_default();
                let path = ptys
                    .get(&format!("char{alias}"))
                    .cloned()
                    .or_else(|| serial_paths.first().cloned().flatten());
                if let ChrSource::Pty { path: p } = &mut c.source {
                    *p = path;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Fills the port QEMU chose for an autoport VNC display into the live definition
/// (`query-vnc`).
async fn fill_vnc_port(qmp: &QmpClient, def: &mut DomainDef) -> Result<(), crate::qmp::QmpError> {
    let needs = def.devices.list.iter().any(|d| {
        matches!(d, Device::Graphics(g) if g.graphics_type == rvirt_conf::domain::GraphicsType::Vnc && g.autoport)
    });
    if !needs {
        return Ok(());
    }
    let info = qmp.execute_raw("query-vnc", serde_json::Value::Null).await?;
    let port = info
        .get("service")
        .and_then(|v| v.as_str())
        .and_then(|p| p.parse::<u32>().ok());
    for device in &mut def.devices.list {
        if let Device::Graphics(g) = device
            && g.graphics_type == rvirt_conf::domain::GraphicsType::Vnc
            && g.autoport
        {
            g.port = port;
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn xml(name: &str) -> String {
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>"
        )
    }

    /// Domains whose definition writes wait for a token on the returned sender and announce
    /// themselves on the returned receiver; a token `false` fails the write.
    fn domains_with_gated_writer(
        dir: &Path,
    ) -> (
        Arc<Domains>,
        mpsc::Sender<bool>,
        tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    ) {
        let (entered_tx, entered_rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = mpsc::channel::<bool>();
        let files = GatedFiles {
            dir: dir.join("etc"),
            entered: entered_tx,
            release: Mutex::new(release_rx),
        };
        let caps = Arc::new(QemuCaps::new(crate::caps::CapsConfig::new(
            &dir.join("data"),
            &dir.join("run"),
        )));
        let paths = DomainPaths::new(&dir.join("etc"), &dir.join("run"), &dir.join("log"));
        for sub in ["etc", "run", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("dirs");
        }
        let domains = Domains::new(
            caps,
            paths,
            resources::Context {
                mode: resources::Mode::System,
            },
        );
        assert!(domains.files.set(Arc::new(files)).is_ok());
        (domains, release_tx, entered_rx)
    }

    /// Definition files whose writes wait for a token and announce themselves.
    struct GatedFiles {
        dir: PathBuf,
        entered: tokio::sync::mpsc::UnboundedSender<PathBuf>,
        release: Mutex<mpsc::Receiver<bool>>,
    }

    impl DefinitionFiles for GatedFiles {
        fn put(&self, name: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
            let path = self.dir.join(name);
            let _ = self.entered.send(path.clone());
            let ok = self
                .release
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .recv()
                .map_err(std::io::Error::other)?;
            if !ok {
                return Err(std::io::Error::other("the disk is full"));
            }
            rvirt_daemon::atomic::write_atomic(&path, data, mode)
        }

        fn remove(&self, name: &str) -> std::io::Result<()> {
            rvirt_daemon::atomic::remove_durable(&self.dir.join(name))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_and_lists_do_not_wait_for_a_definition_on_its_way_to_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (domains, release, mut entered) = domains_with_gated_writer(dir.path());
        release.send(true).expect("token");
        domains.define(&xml("first")).await.expect("define first");
        entered.recv().await.expect("first was written");

        let defining = tokio::spawn({
            let domains = Arc::clone(&domains);
            async move { domains.define(&xml("second")).await }
        });
        let path = entered.recv().await.expect("the second write started");
        assert!(path.ends_with("second.xml"), "{}", path.display());
        // The write is stuck; reads go on, on another thread, within a deadline.
        let reads = tokio::task::spawn_blocking({
            let domains = Arc::clone(&domains);
            move || {
                let first = domains.find(Some(&DomainRef {
                    key: Some(domain_ref::Key::Name("first".into())),
                }));
                let names: Vec<String> = domains.all().iter().map(|vm| vm.describe().name).collect();
                (first.is_ok(), names)
            }
        });
        let (found, names) = tokio::time::timeout(Duration::from_secs(10), reads)
            .await
            .expect("reads do not wait for the disk")
            .expect("reads ran");
        assert!(found);
        assert_eq!(
            names,
            ["first", "second"],
            "listed while its file is written, as in libvirt"
        );
        assert!(!defining.is_finished());
        release.send(true).expect("token");
        defining.await.expect("task").expect("define second");
        assert!(dir.path().join("etc/second.xml").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_definition_that_cannot_be_written_is_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (domains, release, _entered) = domains_with_gated_writer(dir.path());
        release.send(false).expect("token");
        let err = domains.define(&xml("lost")).await.expect_err("the write fails");
        assert!(err.message().contains("the disk is full"), "{}", err.message());
        assert!(domains.all().is_empty());
        // The name is free again.
        release.send(true).expect("token");
        domains
            .define(&xml("lost"))
            .await
            .expect("defined on the second try");
    }
}
