//! Running a daemon: arguments, lock, listeners, serving, readiness, signals, idle exit, drain.

use std::future::Future;
use std::os::fd::FromRawFd as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use tokio::sync::watch;
use tonic::server::NamedService;

use crate::access::{AccessControl, AccessLayer, AccessPolicy};
use crate::busy_poll::BusyPollLayer;
use crate::clients::{ClientRegistry, incoming};
use crate::config::DaemonConfig;
use crate::listen::{self, Listener, SocketKind};
use crate::logging::Logging;
use crate::pidfile::PidFile;
use crate::reflection::{self, LazyReflection};
use rvirt::paths::{BaseDirs, DaemonPaths, Mode};

/// What a daemon is: its name (`virtqemud`) and driver (`qemu`, the folder its state lives in).
#[derive(Debug, Clone, Copy)]
pub struct DaemonSpec {
    /// The daemon's name: sockets, config file and pid file are named after it.
    pub name: &'static str,
    /// The stem of its socket names: the daemon's name, or `rvirt` for the proxy (`rvirt-sock`).
    pub sockets: &'static str,
    /// The driver's name: its config, state and data folders.
    pub driver: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
}

/// The command line every daemon accepts (libvirt's daemon options, plus `--workers`).
#[derive(Debug, Clone, Parser)]
pub struct DaemonArgs {
    /// Configuration file (default: <config>/<daemon>.conf).
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Exit after this many seconds with no clients, unless the driver is busy.
    #[arg(short = 't', long = "timeout", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Log at debug level (RVIRT_LOG wins).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Tokio worker threads (default: the configuration's max_workers, 1).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Run as the system instance or as the caller's session instance (default: system for root).
    #[arg(long, value_parser = ["system", "session"])]
    pub mode: Option<String>,
    /// Listen on TCP/TLS as the configuration says (`listen_tls`, `listen_tcp`); virtproxyd
    /// only, other daemons ignore it.
    #[arg(short = 'l', long)]
    pub listen: bool,
}

/// The gRPC services a driver serves on its read-write and read-only sockets.
#[derive(Debug, Default)]
pub struct ServiceSet {
    routes: tonic::service::RoutesBuilder,
    names: Vec<&'static str>,
}

impl ServiceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server.
    #[must_use]
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.names.push(S::NAME);
        self
    }

    /// The names of the services in the set.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

/// What the runtime needs from a driver.
pub trait Driver: Send + Sync + 'static {
    /// The services for the read-write and read-only sockets.
    fn services(&self) -> ServiceSet;

    /// Why the daemon must not exit when idle (a running VM, an active network), if it must not.
    fn busy(&self) -> Option<String> {
        None
    }

    /// Re-reads the driver's configuration (SIGHUP, or the admin service's Reload).
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }

    /// The daemon starts shutting down: end long-lived streams (close event logs, consoles) so
    /// in-flight calls can drain.
    fn shutting_down(&self) {}
}

/// Connection limits that a reload can change.
#[derive(Debug)]
pub struct Limits {
    /// `max_clients`: read-write and read-only sockets together.
    pub max_clients: AtomicUsize,
    /// `admin_max_clients`.
    pub admin_max_clients: AtomicUsize,
    /// `max_anonymous_clients`: network clients not yet authenticated.
    pub max_anonymous_clients: AtomicUsize,
}

/// One socket the daemon serves, as the admin service reports it.
#[derive(Debug, Clone)]
pub struct SocketInfo {
    /// Its kind.
    pub kind: SocketKind,
    /// Its path.
    pub path: Option<PathBuf>,
    /// Passed by systemd.
    pub activated: bool,
}

/// Everything the runtime shares with drivers, the admin service and signal handling.
pub struct DaemonContext {
    /// The daemon.
    pub spec: DaemonSpec,
    /// System or session.
    pub mode: Mode,
    /// Its paths.
    pub paths: DaemonPaths,
    /// The arguments it was started with.
    pub args: DaemonArgs,
    /// The configuration in force.
    pub config: std::sync::RwLock<DaemonConfig>,
    /// Connected clients.
    pub clients: Arc<ClientRegistry>,
    /// Connection limits.
    pub limits: Limits,
    /// Logging.
    pub logging: Logging,
    /// When the daemon started.
    pub started_at: SystemTime,
    /// Tokio worker threads.
    pub workers: usize,
    /// The sockets served.
    pub sockets: std::sync::RwLock<Vec<SocketInfo>>,
    /// The user the daemon runs as.
    pub uid: u32,
    /// The access rules every listener enforces (default policy and policy file).
    pub access: Arc<AccessControl>,
    /// Keeps the worker polling for a while after each call when that pays (`busy_poll_us`).
    pub busy_poll: Arc<crate::busy_poll::BusyPoll>,
    /// TCP sockets systemd passed for remote clients, until a driver takes them
    /// ([`take_activated_remote`](Self::take_activated_remote)).
    activated_remote: std::sync::Mutex<Vec<(std::os::fd::OwnedFd, listen::RemoteTransport)>>,
    driver: std::sync::OnceLock<Arc<dyn Driver>>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for DaemonContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonContext")
            .field("spec", &self.spec)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl DaemonContext {
    /// Re-reads the configuration file, applies log filters and limits, and reloads the driver.
    pub fn reload(&self) -> Result<(), String> {
        let path = self
            .args
            .config
            .clone()
            .unwrap_or_else(|| self.paths.config_file.clone());
        let config = DaemonConfig::load(&path, self.mode).map_err(|e| error_chain(&e))?;
        // A policy that does not load keeps the one in force (and the old configuration).
        let policy =
            crate::policy::Policy::load(&crate::policy::policy_path(&config.access_policy_file, &path))
                .map_err(|e| e.to_string())?;
        self.logging
            .reload_from_config(self.args.verbose, &config.log_filters)?;
        self.limits
            .max_clients
            .store(config.max_clients as usize, Ordering::Relaxed);
        self.limits
            .admin_max_clients
            .store(config.admin_max_clients as usize, Ordering::Relaxed);
        self.limits
            .max_anonymous_clients
            .store(config.max_anonymous_clients as usize, Ordering::Relaxed);
        self.access.set_rules(policy);
        self.busy_poll.set_ceiling(config.busy_poll());
        if let Ok(mut current) = self.config.write() {
            *current = config;
        }
        if let Some(driver) = self.driver.get() {
            driver.reload()?;
        }
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Takes the TCP sockets systemd passed for remote clients (`*-tls.socket`,
    /// `*-tcp.socket`), with their transport; empty when not socket activated, and after the
    /// first call.
    pub fn take_activated_remote(&self) -> Vec<(std::os::fd::OwnedFd, listen::RemoteTransport)> {
        self.activated_remote
            .lock()
            .map(|mut fds| std::mem::take(&mut *fds))
            .unwrap_or_default()
    }

    /// Why the driver is busy, if it is (and the daemon has a driver yet).
    pub fn driver_busy(&self) -> Option<String> {
        self.driver.get().and_then(|d| d.busy())
    }

    /// Becomes `true` when the daemon starts shutting down: long-lived streams (event watches,
    /// consoles) should end then, so that in-flight calls can drain.
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks the daemon to drain and exit.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Runs a daemon: parses its arguments, and serves the driver `init` builds until SIGTERM or the
/// idle timeout. Returns the process exit code.
pub fn main<F, Fut, D>(spec: DaemonSpec, init: F) -> ExitCode
where
    F: FnOnce(Arc<DaemonContext>) -> Fut,
    Fut: Future<Output = Result<D, String>>,
    D: Driver,
{
    let command = DaemonArgs::command()
        .name(spec.name)
        .about(spec.about)
        .version(env!("CARGO_PKG_VERSION"));
    let args = match DaemonArgs::from_arg_matches(&command.get_matches()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    // SAFETY: no thread has started yet; the runtime is built below.
    let activated = match unsafe { listen::take_activated() } {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("{}: {}", spec.name, error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mode = match args.mode.as_deref() {
        Some("system") => Mode::System,
        Some("session") => Mode::Session,
        _ => Mode::for_current_user(),
    };
    let base = BaseDirs::new(mode);
    let paths = DaemonPaths::new(&base, mode, spec.name, spec.sockets, spec.driver);
    let config_path = args.config.clone().unwrap_or_else(|| paths.config_file.clone());
    let config = match DaemonConfig::load(&config_path, mode) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {}", spec.name, error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let policy = match crate::policy::Policy::load(&crate::policy::policy_path(
        &config.access_policy_file,
        &config_path,
    )) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("{}: {e}", spec.name);
            return ExitCode::FAILURE;
        }
    };
    let logging = Logging::init(args.verbose, &config.log_filters);
    let workers = args.workers.unwrap_or(config.max_workers as usize).max(1);
    let busy_poll = crate::busy_poll::BusyPoll::new(config.busy_poll());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .worker_threads(workers)
        .thread_name(spec.name)
        .enable_all();
    busy_poll.install(&mut runtime);
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", spec.name);
            return ExitCode::FAILURE;
        }
    };
    let ctx = Arc::new(DaemonContext {
        spec,
        mode,
        paths,
        limits: Limits {
            max_clients: AtomicUsize::new(config.max_clients as usize),
            admin_max_clients: AtomicUsize::new(config.admin_max_clients as usize),
            max_anonymous_clients: AtomicUsize::new(config.max_anonymous_clients as usize),
        },
        config: std::sync::RwLock::new(config),
        args,
        clients: Arc::new(ClientRegistry::default()),
        logging,
        started_at: SystemTime::now(),
        workers,
        sockets: std::sync::RwLock::new(Vec::new()),
        uid: nix::unistd::geteuid().as_raw(),
        access: Arc::new(AccessControl::new(
            AccessPolicy {
                daemon_uid: nix::unistd::geteuid().as_raw(),
                write_group: None,
            },
            policy,
        )),
        activated_remote: std::sync::Mutex::new(
            activated
                .remote
                .into_iter()
                // SAFETY: systemd passed these fds to this process for it to own.
                .map(|(fd, transport)| (unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }, transport))
                .collect(),
        ),
        busy_poll,
        driver: std::sync::OnceLock::new(),
        shutdown: watch::channel(false).0,
    });
    match runtime.block_on(run(ctx, activated.local, init)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("{}: {message}", spec.name);
            ExitCode::FAILURE
        }
    }
}

/// The error and its sources, joined with `: `.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

async fn run<F, Fut, D>(
    ctx: Arc<DaemonContext>,
    activated: Vec<(std::os::fd::RawFd, SocketKind)>,
    init: F,
) -> Result<(), String>
where
    F: FnOnce(Arc<DaemonContext>) -> Fut,
    Fut: Future<Output = Result<D, String>>,
    D: Driver,
{
    let spec = ctx.spec;
    let state_dir = &ctx.paths.driver_state_dir;
    std::fs::create_dir_all(state_dir).map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let pid_file = PidFile::acquire(&ctx.paths.pid_file, spec.name).map_err(|e| error_chain(&e))?;

    let listeners = if activated.is_empty() {
        let config = ctx
            .config
            .read()
            .map_err(|_| "configuration lock poisoned")?
            .clone();
        listen::bind_all(&ctx.paths, &config)
    } else {
        listen::from_activated(activated, &ctx.paths)
    }
    .map_err(|e| error_chain(&e))?;
    if let Ok(mut sockets) = ctx.sockets.write() {
        *sockets = listeners
            .iter()
            .map(|l| SocketInfo {
                kind: l.kind,
                path: l.path.clone(),
                activated: l.activated,
            })
            .collect();
    }

    let driver: Arc<dyn Driver> = Arc::new(init(Arc::clone(&ctx)).await?);
    let _ = ctx.driver.set(Arc::clone(&driver));
    let unused = ctx.take_activated_remote();
    if !unused.is_empty() {
        tracing::warn!(
            count = unused.len(),
            "systemd passed TCP sockets for remote clients, which only virtproxyd serves: closing them"
        );
    }
    let driver_services = driver.services();
    let admin_services =
        ServiceSet::new().with(rvirt_proto::v1::admin_service_server::AdminServiceServer::new(
            crate::admin::AdminApi::new(Arc::clone(&ctx)),
        ));
    let main_routes = with_infrastructure(driver_services).await?;
    let admin_routes = with_infrastructure(admin_services).await?;

    ctx.access.set_base(AccessPolicy {
        daemon_uid: ctx.uid,
        write_group: write_group(&ctx, &listeners)?,
    });
    let keepalive = ctx.config.read().map(|c| c.keepalive()).unwrap_or(None);
    let mut servers = tokio::task::JoinSet::new();
    let mut owned_paths = Vec::new();
    for Listener {
        kind,
        path,
        activated,
        socket,
    } in listeners
    {
        let listener =
            tokio::net::UnixListener::from_std(socket).map_err(|e| format!("cannot serve a socket: {e}"))?;
        if !activated {
            owned_paths.extend(path.clone());
        }
        let (routes, limit_kinds): (_, &'static [SocketKind]) = match kind {
            SocketKind::Admin => (admin_routes.clone(), &[SocketKind::Admin]),
            _ => (
                main_routes.clone(),
                &[SocketKind::ReadWrite, SocketKind::ReadOnly],
            ),
        };
        let limit_ctx = Arc::clone(&ctx);
        let limit = move || match kind {
            SocketKind::Admin => limit_ctx.limits.admin_max_clients.load(Ordering::Relaxed),
            _ => limit_ctx.limits.max_clients.load(Ordering::Relaxed),
        };
        let stream = incoming(listener, kind, Arc::clone(&ctx.clients), limit, limit_kinds);
        let mut stop = ctx.shutdown.subscribe();
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(keepalive.map(|(interval, _)| interval))
            .http2_keepalive_timeout(keepalive.map(|(_, timeout)| timeout))
            // Bulk streams (volume upload/download, 1 MiB messages) need more than hyper's
            // 1 MiB receive windows and 16 KiB frames to keep the pipe full.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .max_frame_size(Some(1 << 20))
            .layer(BusyPollLayer::new(Arc::clone(&ctx.busy_poll)))
            .layer(AccessLayer::with_control(Arc::clone(&ctx.access)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(stream, async move {
                let _ = stop.wait_for(|stop| *stop).await;
            });
        let shown = path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        servers.spawn(async move {
            server
                .await
                .map_err(|e| format!("serving {shown}: {}", error_chain(&e)))
        });
    }

    let signals = tokio::spawn(handle_signals(Arc::clone(&ctx), Signals::install()?));
    tracing::info!(daemon = spec.name, mode = ctx.mode.as_str(), "ready");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let idle = ctx.args.timeout.filter(|t| *t > 0).map(|secs| {
        tokio::spawn(idle_exit(
            Arc::clone(&ctx),
            Arc::clone(&driver),
            Duration::from_secs(secs),
        ))
    });

    let mut stop = ctx.shutdown.subscribe();
    let mut failure = None;
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => {}
        Some(ended) = servers.join_next() => {
            // A listener that ends because shutdown was requested is no failure.
            if !*ctx.shutdown.borrow() {
                failure = Some(match ended {
                    Ok(Ok(())) => "a listener stopped unexpectedly".to_owned(),
                    Ok(Err(e)) => e,
                    Err(e) => format!("a listener failed: {e}"),
                });
            }
            ctx.request_shutdown();
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    driver.shutting_down();
    let drain = Duration::from_secs(ctx.config.read().map(|c| c.shutdown_timeout).unwrap_or(10));
    tracing::info!(seconds = drain.as_secs(), "draining in-flight calls");
    if tokio::time::timeout(drain, async { while servers.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("calls still running after the drain timeout; exiting anyway");
        servers.abort_all();
    }
    signals.abort();
    if let Some(idle) = idle {
        idle.abort();
    }
    for path in owned_paths {
        let _ = std::fs::remove_file(path);
    }
    drop(pid_file);
    tracing::info!(daemon = spec.name, "stopped");
    failure.map_or(Ok(()), Err)
}

/// The group whose members may write: `unix_sock_group` when configured, else the group of a
/// read-write socket that systemd passed (`SocketGroup=`) when it is not root's.
fn write_group(ctx: &DaemonContext, listeners: &[Listener]) -> Result<Option<u32>, String> {
    use std::os::unix::fs::MetadataExt as _;
    let configured = ctx
        .config
        .read()
        .map(|c| c.unix_sock_group.clone())
        .unwrap_or_default();
    if let Some(gid) = listen::resolve_group(&configured).map_err(|e| e.to_string())? {
        return Ok(Some(gid.as_raw()));
    }
    let activated_rw = listeners
        .iter()
        .find(|l| l.activated && l.kind == SocketKind::ReadWrite);
    Ok(activated_rw
        .and_then(|l| l.path.as_ref())
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.gid())
        .filter(|gid| *gid != 0))
}

/// Adds gRPC health (every service reported SERVING) and reflection v1 + v1alpha to a set.
async fn with_infrastructure(set: ServiceSet) -> Result<tonic::service::Routes, String> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in set.names() {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // Built on the first reflection call (see `reflection`), not now.
    let v1 = LazyReflection::<reflection::V1>::new(set.names());
    let v1alpha = LazyReflection::<reflection::V1Alpha>::new(set.names());
    let ServiceSet { mut routes, .. } = set;
    routes.add_service(health).add_service(v1).add_service(v1alpha);
    Ok(routes.routes())
}

/// The signals a daemon handles, installed before it reports readiness so that a signal sent
/// right after READY=1 is never lost to the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let install =
            |kind: SignalKind| signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"));
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

async fn handle_signals(ctx: Arc<DaemonContext>, mut signals: Signals) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => { tracing::info!("SIGTERM: shutting down"); ctx.request_shutdown(); }
            _ = signals.int.recv() => { tracing::info!("SIGINT: shutting down"); ctx.request_shutdown(); }
            _ = signals.hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                if let Err(e) = ctx.reload() {
                    tracing::error!("reload failed, keeping the previous configuration: {e}");
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
}

/// Exits after `timeout` with no clients, unless the driver says it is busy; a busy daemon checks
/// again after each further `timeout`.
async fn idle_exit(ctx: Arc<DaemonContext>, driver: Arc<dyn Driver>, timeout: Duration) {
    let mut clients = ctx.clients.watch_count();
    loop {
        if clients.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(timeout) => {
                match driver.busy() {
                    Some(reason) => tracing::debug!(reason, "idle timeout reached, but the driver is busy"),
                    None => {
                        tracing::info!(seconds = timeout.as_secs(), "idle timeout: exiting");
                        ctx.request_shutdown();
                        return;
                    }
                }
            }
            changed = clients.wait_for(|n| *n > 0) => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
