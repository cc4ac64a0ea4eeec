//! End to end: virtqemud runs real QEMU guests — the tiny boot-sector guest of
//! `rvirt_e2e::guest` — through their whole lifecycle, over its real socket.
//!
//! Every test skips (with a message) when `qemu-system-x86_64` is not installed. Guests run
//! under TCG (fast for a boot sector here); one test runs under KVM when `/dev/kvm` works. A
//! [`Reaper`] kills every QEMU a test's daemon left running, whatever happened to the test.

use std::path::PathBuf;
use std::time::Duration;

use rvirt_e2e::guest::{self, SerialKind, Transcript};
use rvirt_e2e::qemu::{Reaper, qemu_present, status_pid};
use rvirt_e2e::{DaemonProcess, TestRoot, channel};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::domain_lifecycle_event::Detail;
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::domain_state_reason::Reason;
use rvirt_proto::v1::*;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);

/// Fields drop in order: the reaper first (it reads the status files under the root), then
/// the daemon, then the root directory.
struct Env {
    _reaper: Reaper,
    daemon: DaemonProcess,
    client: DomainServiceClient<Channel>,
    root: TestRoot,
}

impl Env {
    async fn new() -> Env {
        Env::in_root(TestRoot::new()).await
    }

    /// A daemon whose access policy file is `policy`.
    async fn with_policy(policy: &str) -> Env {
        let root = TestRoot::new();
        root.write_config("access.toml", policy);
        Env::in_root(root).await
    }

    async fn in_root(root: TestRoot) -> Env {
        let reaper = Reaper::new(&root);
        let daemon = DaemonProcess::start("virtqemud", &root).await;
        let client = DomainServiceClient::new(channel(&root.socket("virtqemud-sock")).await);
        Env {
            root,
            daemon,
            client,
            _reaper: reaper,
        }
    }

    async fn restart(&mut self) {
        self.daemon = DaemonProcess::start("virtqemud", &self.root).await;
        self.client = DomainServiceClient::new(channel(&self.root.socket("virtqemud-sock")).await);
    }

    fn disk(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(format!("{name}.img"));
        guest::write_boot_disk(&path, name).expect("boot disk");
        path
    }

    async fn define(&mut self, name: &str) -> Domain {
        let disk = self.disk(name);
        let xml = guest::domain_xml(name, &disk, "qemu", SerialKind::Pty);
        self.client
            .define_domain_xml(DefineDomainXmlRequest { xml, flags: 0 })
            .await
            .expect("define")
            .into_inner()
            .domain
            .expect("domain")
    }

    async fn start(&mut self, name: &str, flags: u32) {
        self.client
            .start_domain(StartDomainRequest {
                domain: Some(by_name(name)),
                flags,
            })
            .await
            .expect("start");
    }

    async fn state(&mut self, name: &str) -> (DomainState, Reason) {
        let response = self
            .client
            .get_domain_state(GetDomainStateRequest {
                domain: Some(by_name(name)),
            })
            .await
            .expect("state")
            .into_inner();
        (
            DomainState::try_from(response.state).expect("known state"),
            response.reason.and_then(|r| r.reason).expect("reason"),
        )
    }

    /// The domain's XML, with `GetDomainXml` flags `flags`.
    async fn xml(&mut self, name: &str, flags: u32) -> String {
        self.client
            .get_domain_xml(GetDomainXmlRequest {
                domain: Some(by_name(name)),
                flags,
            })
            .await
            .expect("domain XML")
            .into_inner()
            .xml
    }

    async fn undefine(&mut self, name: &str) {
        self.client
            .undefine_domain(UndefineDomainRequest {
                domain: Some(by_name(name)),
                flags: 0,
            })
            .await
            .expect("undefine");
    }

    /// The names of every listed domain, sorted.
    async fn names(&mut self) -> Vec<String> {
        let mut names: Vec<String> = self
            .client
            .list_domains(ListDomainsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .domains
            .into_iter()
            .map(|d| d.name)
            .collect();
        names.sort();
        names
    }

    async fn destroy(&mut self, name: &str) {
        self.client
            .destroy_domain(DestroyDomainRequest {
                domain: Some(by_name(name)),
                flags: 0,
            })
            .await
            .expect("destroy");
    }

    async fn events(&mut self) -> Events {
        let mut stream = self
            .client
            .watch_domain_events(WatchDomainEventsRequest::default())
            .await
            .expect("watch")
            .into_inner();
        // Wait until the subscription is live, so no later event is missed.
        loop {
            let message = tokio::time::timeout(DEADLINE, stream.next())
                .await
                .expect("caught up in time")
                .expect("stream open")
                .expect("message");
            if let Some(watch_domain_events_response::Message::CaughtUp(_)) = message.message {
                break;
            }
        }
        Events { stream }
    }

    fn qemu_pid(&self, name: &str) -> u32 {
        status_pid(&self.root.run_dir().join("qemu").join(format!("{name}.status")))
            .expect("status file with pid")
    }
}

fn by_name(name: &str) -> DomainRef {
    DomainRef {
        key: Some(domain_ref::Key::Name(name.to_owned())),
    }
}

struct Events {
    stream: tonic::Streaming<WatchDomainEventsResponse>,
}

impl Events {
    /// Waits for the next event of domain `name` matching `want`; returns every event of that
    /// domain seen on the way.
    async fn wait(
        &mut self,
        name: &str,
        want: impl Fn(&domain_event::Event) -> bool,
    ) -> Vec<domain_event::Event> {
        let mut seen = Vec::new();
        let wait = async {
            while let Some(message) = self.stream.next().await {
                let message = message.expect("event stream");
                if let Some(watch_domain_events_response::Message::Event(event)) = message.message {
                    if event.domain.as_ref().map(|d| d.name.as_str()) != Some(name) {
                        continue;
                    }
                    let e = event.event.expect("event body");
                    let done = want(&e);
                    seen.push(e);
                    if done {
                        return true;
                    }
                }
            }
            false
        };
        let found = tokio::time::timeout(DEADLINE, wait).await.unwrap_or(false);
        assert!(found, "expected event for {name} not seen; saw {seen:?}");
        seen
    }
}

fn is_lifecycle(kind: DomainEventType, detail: Detail) -> impl Fn(&domain_event::Event) -> bool {
    move |e| {
        matches!(e, domain_event::Event::Lifecycle(l)
            if l.r#type == kind as i32 && l.detail == Some(detail))
    }
}

/// A console stream opened through the API.
struct Console {
    input: tokio::sync::mpsc::Sender<OpenDomainConsoleRequest>,
    output: tonic::Streaming<OpenDomainConsoleResponse>,
    transcript: Transcript,
    closed: Option<DomainConsoleClosed>,
}

impl Console {
    async fn open(
        client: &mut DomainServiceClient<Channel>,
        name: &str,
        flags: u32,
    ) -> Result<Console, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(OpenDomainConsoleRequest {
            message: Some(open_domain_console_request::Message::Open(DomainConsoleOpen {
                domain: Some(by_name(name)),
                dev_name: String::new(),
                flags,
            })),
        })
        .await
        .expect("queue open");
        let mut output = client
            .open_domain_console(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = tokio::time::timeout(DEADLINE, output.next())
            .await
            .expect("opened in time")
            .expect("stream open")?;
        assert!(
            matches!(
                first.message,
                Some(open_domain_console_response::Message::Opened(_))
            ),
            "first console message is Opened: {first:?}"
        );
        Ok(Console {
            input: tx,
            output,
            transcript: Transcript::default(),
            closed: None,
        })
    }

    async fn send(&self, bytes: &[u8]) {
        self.input
            .send(OpenDomainConsoleRequest {
                message: Some(open_domain_console_request::Message::Data(bytes.to_vec())),
            })
            .await
            .expect("console input");
    }

    async fn expect(&mut self, needle: &str) -> Vec<u8> {
        let wait = async {
            loop {
                if let Some(out) = self.transcript.take_through(needle.as_bytes()) {
                    return Some(out);
                }
                match self.output.next().await {
                    Some(Ok(OpenDomainConsoleResponse {
                        message: Some(open_domain_console_response::Message::Data(data)),
                    })) => self.transcript.push(&data),
                    Some(Ok(OpenDomainConsoleResponse {
                        message: Some(open_domain_console_response::Message::Closed(closed)),
                    })) => {
                        self.closed = Some(closed);
                        return None;
                    }
                    _ => return None,
                }
            }
        };
        let out = tokio::time::timeout(DEADLINE, wait).await.ok().flatten();
        out.unwrap_or_else(|| {
            panic!(
                "console: {needle:?} not received; got {:?}, closed {:?}",
                String::from_utf8_lossy(self.transcript.pending()),
                self.closed
            )
        })
    }

    /// Waits for the stream's `closed` message.
    async fn closed(&mut self) -> DomainConsoleClosed {
        if let Some(closed) = self.closed.take() {
            return closed;
        }
        let wait = async {
            while let Some(message) = self.output.next().await {
                if let Ok(OpenDomainConsoleResponse {
                    message: Some(open_domain_console_response::Message::Closed(closed)),
                }) = message
                {
                    return Some(closed);
                }
            }
            None
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .ok()
            .flatten()
            .expect("console closed message")
    }
}

const START_PAUSED: u32 = DomainCreateFlag::StartPaused as u32;

/// Starts `name` paused, attaches a console, resumes, and waits for the guest's banner.
async fn boot_with_console(env: &mut Env, name: &str) -> Console {
    env.start(name, START_PAUSED).await;
    let mut console = Console::open(&mut env.client, name, 0)
        .await
        .expect("console opens");
    env.client
        .resume_domain(ResumeDomainRequest {
            domain: Some(by_name(name)),
        })
        .await
        .expect("resume");
    console.expect(&guest::banner_line(name)).await;
    console
}

#[tokio::test]
async fn a_guest_runs_through_its_whole_lifecycle() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    let mut events = env.events().await;
    let domain = env.define("life").await;
    assert!(domain.persistent && !domain.active);
    events
        .wait("life", is_lifecycle(DomainEventType::Defined, Detail::Defined(0)))
        .await;

    let mut console = boot_with_console(&mut env, "life").await;
    events
        .wait(
            "life",
            is_lifecycle(
                DomainEventType::Started,
                Detail::Started(DomainEventStartedDetail::Booted as i32),
            ),
        )
        .await;
    assert_eq!(
        env.state("life").await,
        (
            DomainState::Running,
            Reason::Running(DomainRunningReason::Unpaused as i32)
        )
    );
    console.send(b"x").await;
    console.expect("x").await;

    env.client
        .suspend_domain(SuspendDomainRequest {
            domain: Some(by_name("life")),
        })
        .await
        .expect("suspend");
    assert_eq!(
        env.state("life").await,
        (
            DomainState::Paused,
            Reason::Paused(DomainPausedReason::User as i32)
        )
    );
    events
        .wait(
            "life",
            is_lifecycle(
                DomainEventType::Suspended,
                Detail::Suspended(DomainEventSuspendedDetail::Paused as i32),
            ),
        )
        .await;
    env.client
        .resume_domain(ResumeDomainRequest {
            domain: Some(by_name("life")),
        })
        .await
        .expect("resume");
    events
        .wait(
            "life",
            is_lifecycle(
                DomainEventType::Resumed,
                Detail::Resumed(DomainEventResumedDetail::Unpaused as i32),
            ),
        )
        .await;
    console.send(b"y").await;
    console.expect("y").await;

    let info = env
        .client
        .get_domain_info(GetDomainInfoRequest {
            domain: Some(by_name("life")),
        })
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.max_memory_kib, 32 * 1024);
    assert_eq!(info.nr_virt_cpu, 1);
    assert!(info.cpu_time_ns > 0, "QEMU has used CPU time: {info:?}");

    let live = env.xml("life", 0).await;
    assert!(live.starts_with("<domain type='qemu' id='"), "{live}");
    assert!(
        live.contains("<source path='/dev/pts/"),
        "live XML has the pty: {live}"
    );

    env.destroy("life").await;
    assert_eq!(
        env.state("life").await,
        (
            DomainState::Shutoff,
            Reason::Shutoff(DomainShutoffReason::Destroyed as i32)
        )
    );
    events
        .wait(
            "life",
            is_lifecycle(
                DomainEventType::Stopped,
                Detail::Stopped(DomainEventStoppedDetail::Destroyed as i32),
            ),
        )
        .await;
    assert_eq!(
        console.closed().await.reason,
        DomainConsoleCloseReason::DomainStopped as i32
    );

    env.undefine("life").await;
    events
        .wait(
            "life",
            is_lifecycle(DomainEventType::Undefined, Detail::Undefined(0)),
        )
        .await;
    let missing = env
        .client
        .lookup_domain(LookupDomainRequest {
            domain: Some(by_name("life")),
        })
        .await
        .expect_err("gone");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
}

#[tokio::test]
async fn a_guest_that_powers_off_is_shut_off_with_reason_shutdown() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("poweroff").await;
    let mut events = env.events().await;
    let console = boot_with_console(&mut env, "poweroff").await;
    console.send(&[guest::POWER_OFF]).await;
    let seen = events
        .wait(
            "poweroff",
            is_lifecycle(
                DomainEventType::Stopped,
                Detail::Stopped(DomainEventStoppedDetail::Shutdown as i32),
            ),
        )
        .await;
    assert!(
        seen.iter().any(is_lifecycle(
            DomainEventType::Shutdown,
            Detail::Shutdown(DomainEventShutdownDetail::Guest as i32)
        )),
        "a guest shutdown event came first: {seen:?}"
    );
    assert_eq!(
        env.state("poweroff").await,
        (
            DomainState::Shutoff,
            Reason::Shutoff(DomainShutoffReason::Shutdown as i32)
        )
    );
}

#[tokio::test]
async fn a_guest_ignoring_the_power_button_keeps_running_until_destroyed() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("stubborn").await;
    let mut console = boot_with_console(&mut env, "stubborn").await;
    env.client
        .shutdown_domain(ShutdownDomainRequest {
            domain: Some(by_name("stubborn")),
            flags: 0,
        })
        .await
        .expect("shutdown request delivered");
    // The guest still answers after the power button press: it ignored it.
    console.send(b"z").await;
    console.expect("z").await;
    assert_eq!(env.state("stubborn").await.0, DomainState::Running);
    env.destroy("stubborn").await;
    assert_eq!(env.state("stubborn").await.0, DomainState::Shutoff);
}

#[tokio::test]
async fn a_guest_reset_emits_a_reboot_event_and_the_guest_boots_again() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("resetter").await;
    let mut events = env.events().await;
    let mut console = boot_with_console(&mut env, "resetter").await;
    console.send(&[guest::RESET]).await;
    events
        .wait("resetter", |e| matches!(e, domain_event::Event::Reboot(_)))
        .await;
    console.expect(&guest::banner_line("resetter")).await;
    assert_eq!(env.state("resetter").await.0, DomainState::Running);
    env.destroy("resetter").await;
}

#[tokio::test]
async fn a_killed_qemu_leaves_the_domain_shut_off_crashed_with_an_event() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("victim").await;
    let mut events = env.events().await;
    env.start("victim", 0).await;
    let pid = env.qemu_pid("victim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill QEMU");
    events
        .wait(
            "victim",
            is_lifecycle(
                DomainEventType::Stopped,
                Detail::Stopped(DomainEventStoppedDetail::Failed as i32),
            ),
        )
        .await;
    assert_eq!(
        env.state("victim").await,
        (
            DomainState::Shutoff,
            Reason::Shutoff(DomainShutoffReason::Crashed as i32)
        )
    );
}

#[tokio::test]
async fn guests_survive_a_killed_daemon_and_stay_controllable() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("keep-a").await;
    env.define("keep-b").await;
    let _console_a = boot_with_console(&mut env, "keep-a").await;
    env.start("keep-b", 0).await;
    let pids = (env.qemu_pid("keep-a"), env.qemu_pid("keep-b"));
    let ids: Vec<i32> = {
        let list = env
            .client
            .list_domains(ListDomainsRequest { flags: 0 })
            .await
            .expect("list")
            .into_inner();
        list.domains.iter().map(|d| d.id).collect()
    };

    env.daemon.signal(nix::sys::signal::Signal::SIGKILL);
    env.daemon.wait_exit(DEADLINE).await.expect("daemon exits");
    env.restart().await;

    let list = env
        .client
        .list_domains(ListDomainsRequest { flags: 0 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.domains.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
    for d in &list.domains {
        assert_eq!(d.state, DomainState::Running as i32, "{d:?}");
    }
    assert_eq!((env.qemu_pid("keep-a"), env.qemu_pid("keep-b")), pids);

    // Still controllable: the console reaches the guest, suspend and destroy work.
    let mut console = Console::open(&mut env.client, "keep-a", 0)
        .await
        .expect("console after restart");
    console.send(b"q").await;
    console.expect("q").await;
    env.client
        .suspend_domain(SuspendDomainRequest {
            domain: Some(by_name("keep-b")),
        })
        .await
        .expect("suspend after restart");
    assert_eq!(env.state("keep-b").await.0, DomainState::Paused);
    env.destroy("keep-a").await;
    env.destroy("keep-b").await;
    assert_eq!(env.state("keep-a").await.0, DomainState::Shutoff);
}

#[tokio::test]
async fn a_domain_that_died_while_the_daemon_was_down_is_crashed_after_restart() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("orphan").await;
    env.start("orphan", 0).await;
    let pid = env.qemu_pid("orphan");
    env.daemon.signal(nix::sys::signal::Signal::SIGKILL);
    env.daemon.wait_exit(DEADLINE).await.expect("daemon exits");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill QEMU");
    // Wait until the QEMU is gone (its pidfd says so) before restarting the daemon.
    wait_gone(pid).await;
    env.restart().await;
    assert_eq!(
        env.state("orphan").await,
        (
            DomainState::Shutoff,
            Reason::Shutoff(DomainShutoffReason::Crashed as i32)
        )
    );
}

async fn wait_gone(pid: u32) {
    // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return;
    }
    let fd = i32::try_from(raw).expect("fd");
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let done = tokio::task::spawn_blocking(move || {
        // SAFETY: one valid pollfd; the descriptor is ours and closed below.
        let rc = unsafe { libc::poll(&mut poll, 1, 30_000) };
        // SAFETY: closing our own descriptor once.
        unsafe { libc::close(fd) };
        rc
    })
    .await
    .expect("poll");
    assert!(done > 0, "QEMU {pid} exits after SIGKILL");
}

#[tokio::test]
async fn twenty_guests_start_concurrently() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    let names: Vec<String> = (0..20).map(|i| format!("many-{i:02}")).collect();
    for name in &names {
        env.define(name).await;
    }
    let starts = names.iter().map(|name| {
        let mut client = env.client.clone();
        let name = name.clone();
        async move {
            client
                .start_domain(StartDomainRequest {
                    domain: Some(by_name(&name)),
                    flags: 0,
                })
                .await
                .map(|_| ())
        }
    });
    let results = futures_join_all(starts).await;
    for (name, result) in names.iter().zip(&results) {
        assert!(result.is_ok(), "{name}: {result:?}");
    }
    let running = env
        .client
        .list_domains(ListDomainsRequest {
            flags: DomainListFlag::Running as u32,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(running.domains.len(), 20);
    let mut ids: Vec<i32> = running.domains.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every guest has its own id");
    for name in &names {
        env.destroy(name).await;
    }
}

/// Runs futures concurrently on this task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => outputs[i] = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("completed")).collect()
}

#[tokio::test]
async fn a_kvm_guest_boots_when_kvm_works() {
    if !qemu_present() {
        return;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return;
    }
    let mut env = Env::new().await;
    let disk = env.disk("kvmguest");
    let xml = guest::domain_xml("kvmguest", &disk, "kvm", SerialKind::Pty);
    env.client
        .define_domain_xml(DefineDomainXmlRequest { xml, flags: 0 })
        .await
        .expect("define kvm domain");
    let mut console = boot_with_console(&mut env, "kvmguest").await;
    console.send(b"k").await;
    console.expect("k").await;
    env.destroy("kvmguest").await;
}

#[tokio::test]
async fn a_qemu_that_cannot_start_is_reported_with_its_log() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    let missing = env.root.path().join("no-such-disk.img");
    let xml = guest::domain_xml("broken", &missing, "qemu", SerialKind::Pty);
    env.client
        .define_domain_xml(DefineDomainXmlRequest { xml, flags: 0 })
        .await
        .expect("define");
    let error = env
        .client
        .start_domain(StartDomainRequest {
            domain: Some(by_name("broken")),
            flags: 0,
        })
        .await
        .expect_err("start fails");
    assert!(
        error.message().contains("no-such-disk.img"),
        "the error quotes QEMU's complaint: {}",
        error.message()
    );
    assert_eq!(
        env.state("broken").await.0,
        DomainState::Shutoff,
        "the domain stays defined and shut off"
    );
}

#[tokio::test]
async fn definitions_and_autostart_survive_a_restart() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("auto").await;
    env.define("manual").await;
    env.client
        .set_domain_autostart(SetDomainAutostartRequest {
            domain: Some(by_name("auto")),
            autostart: true,
        })
        .await
        .expect("autostart");
    env.daemon.signal(nix::sys::signal::Signal::SIGTERM);
    env.daemon.wait_exit(DEADLINE).await.expect("daemon exits");
    env.restart().await;
    let mut events = env.events().await;
    // The autostart may have happened before this subscription: check the state first.
    if env.state("auto").await.0 != DomainState::Running {
        events
            .wait(
                "auto",
                is_lifecycle(
                    DomainEventType::Started,
                    Detail::Started(DomainEventStartedDetail::Booted as i32),
                ),
            )
            .await;
    }
    assert_eq!(env.state("auto").await.0, DomainState::Running);
    assert_eq!(env.state("manual").await.0, DomainState::Shutoff);
    let autostart = env
        .client
        .get_domain_autostart(GetDomainAutostartRequest {
            domain: Some(by_name("auto")),
        })
        .await
        .expect("get autostart")
        .into_inner()
        .autostart;
    assert!(autostart);
    env.destroy("auto").await;
}

/// Definition changes are journaled and the files checkpointed later (docs/domains.md): a
/// daemon killed right after its calls returned comes back with every one of them.
#[tokio::test]
async fn every_definition_change_survives_a_killed_daemon() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    let mut uuid = String::new();
    for name in ["kept", "changed", "gone", "old-name"] {
        let domain = env.define(name).await;
        if name == "changed" {
            uuid = domain.uuid;
        }
    }
    let disk = env.disk("changed");
    let xml = guest::domain_xml("changed", &disk, "qemu", SerialKind::Pty).replacen(
        "<name>changed</name>",
        &format!("<name>changed</name><uuid>{uuid}</uuid><title>second version</title>"),
        1,
    );
    assert!(xml.contains("second version"), "{xml}");
    env.client
        .define_domain_xml(DefineDomainXmlRequest { xml, flags: 0 })
        .await
        .expect("redefine");
    env.undefine("gone").await;
    env.client
        .rename_domain(RenameDomainRequest {
            domain: Some(by_name("old-name")),
            new_name: "new-name".into(),
            flags: 0,
        })
        .await
        .expect("rename");

    // At once, before the journal's checkpoint (a quarter of a second of quiet) is likely.
    env.daemon.signal(nix::sys::signal::Signal::SIGKILL);
    env.daemon.wait_exit(DEADLINE).await.expect("daemon exits");
    env.restart().await;

    assert_eq!(env.names().await, ["changed", "kept", "new-name"]);
    let changed = env.xml("changed", 0).await;
    assert!(changed.contains("<title>second version</title>"), "{changed}");
    // The files on disk say the same once the journal was replayed.
    let config = env.root.path().join("etc/rvirt/qemu");
    let mut files: Vec<String> = std::fs::read_dir(&config)
        .expect("config dir")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".xml"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["changed.xml", "kept.xml", "new-name.xml"],
        "in {}",
        config.display()
    );
}

#[tokio::test]
async fn a_second_console_is_refused_unless_it_forces() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("shared").await;
    let mut first = boot_with_console(&mut env, "shared").await;
    let refused = Console::open(&mut env.client, "shared", 0)
        .await
        .err()
        .expect("second console refused");
    assert!(
        refused.message().contains("active console session"),
        "{}",
        refused.message()
    );
    let mut second = Console::open(&mut env.client, "shared", DomainConsoleFlag::Force as u32)
        .await
        .expect("forced console");
    assert_eq!(
        first.closed().await.reason,
        DomainConsoleCloseReason::TakenOver as i32
    );
    second.send(b"s").await;
    second.expect("s").await;
    env.destroy("shared").await;
}

/// Runs `rvirsh -c qemu:///system ARGS` against the test's root.
fn rvirsh(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(rvirt_e2e::binary("rvirsh"))
        .env("RVIRT_ROOT", env.root.path())
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("rvirsh runs")
}

#[tokio::test]
async fn rvirsh_drives_a_guest_and_its_console_until_ctrl_bracket() {
    if !qemu_present() {
        return;
    }
    let env = Env::new().await;
    let disk = env.disk("shell");
    let xml_path = env.root.path().join("shell.xml");
    std::fs::write(
        &xml_path,
        guest::domain_xml("shell", &disk, "qemu", SerialKind::Pty),
    )
    .expect("xml file");
    let defined = rvirsh(&env, &["define", &xml_path.to_string_lossy()]);
    assert!(defined.status.success(), "{defined:?}");
    let started = rvirsh(&env, &["start", "shell", "--paused"]);
    assert!(started.status.success(), "{started:?}");

    // The console: rvirsh reads keys from its standard input (a pipe here, so no raw mode).
    let mut console = tokio::process::Command::new(rvirt_e2e::binary("rvirsh"))
        .env("RVIRT_ROOT", env.root.path())
        .args(["-c", "qemu:///system", "console", "shell"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("rvirsh console");
    let mut stdin = console.stdin.take().expect("stdin");
    let mut out = rvirt_e2e::guest::SerialReader::new(console.stdout.take().expect("stdout"));
    out.expect(b"Escape character is ^]", DEADLINE)
        .await
        .expect("console banner");
    let resumed = rvirsh(&env, &["resume", "shell"]);
    assert!(resumed.status.success(), "{resumed:?}");
    out.expect(guest::banner_line("shell").as_bytes(), DEADLINE)
        .await
        .expect("guest banner through rvirsh");
    use tokio::io::AsyncWriteExt as _;
    stdin.write_all(b"e").await.expect("key");
    out.expect(b"e", DEADLINE).await.expect("echo through rvirsh");
    stdin.write_all(&[0x1d]).await.expect("ctrl+]");
    let status = tokio::time::timeout(DEADLINE, console.wait())
        .await
        .expect("rvirsh leaves on ctrl+]")
        .expect("exit status");
    assert!(status.success(), "rvirsh console exits cleanly: {status:?}");

    let list = rvirsh(&env, &["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("shell") && text.contains("running"), "{text}");
    let destroyed = rvirsh(&env, &["destroy", "shell"]);
    assert!(destroyed.status.success(), "{destroyed:?}");
    let state = rvirsh(&env, &["domstate", "shell", "--reason"]);
    assert_eq!(
        String::from_utf8_lossy(&state.stdout).trim(),
        "shut off (destroyed)"
    );
}

#[tokio::test]
async fn a_transient_domain_runs_reports_stats_resets_and_disappears_when_destroyed() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    let mut events = env.events().await;
    let disk = env.disk("fleeting");
    let xml = guest::domain_xml("fleeting", &disk, "qemu", SerialKind::Pty);
    let created = env
        .client
        .create_domain_xml(CreateDomainXmlRequest {
            xml,
            flags: START_PAUSED,
        })
        .await
        .expect("create")
        .into_inner()
        .domain
        .expect("domain");
    assert!(created.active && !created.persistent, "{created:?}");
    assert!(created.id > 0);
    // Boot it with a console attached, so the guest has read its disk when stats are taken.
    let mut console = Console::open(&mut env.client, "fleeting", 0)
        .await
        .expect("console");
    env.client
        .resume_domain(ResumeDomainRequest {
            domain: Some(by_name("fleeting")),
        })
        .await
        .expect("resume");
    console.expect(&guest::banner_line("fleeting")).await;

    let stats = env
        .client
        .get_domain_stats(GetDomainStatsRequest {
            domains: vec![by_name("fleeting")],
            stats: 0,
            flags: 0,
        })
        .await
        .expect("stats")
        .into_inner();
    let record = stats.records.first().expect("one record");
    assert_eq!(
        record.state.as_ref().map(|s| s.state),
        Some(DomainState::Running as i32)
    );
    assert_eq!(record.balloon.as_ref().map(|b| b.maximum_kib), Some(32 * 1024));
    assert_eq!(record.vcpu.as_ref().map(|v| v.vcpus.len()), Some(1));
    let block = record.blocks.first().expect("block stats for vda");
    assert_eq!(block.name, "vda");
    assert!(block.rd_reqs > 0, "the guest's boot sector was read: {block:?}");

    env.client
        .reset_domain(ResetDomainRequest {
            domain: Some(by_name("fleeting")),
            flags: 0,
        })
        .await
        .expect("reset");
    events
        .wait("fleeting", |e| matches!(e, domain_event::Event::Reboot(_)))
        .await;
    // The guest ignores the power button, so a reboot request is accepted and changes nothing.
    env.client
        .reboot_domain(RebootDomainRequest {
            domain: Some(by_name("fleeting")),
            flags: 0,
        })
        .await
        .expect("reboot request delivered");
    assert_eq!(env.state("fleeting").await.0, DomainState::Running);

    env.destroy("fleeting").await;
    let gone = env
        .client
        .lookup_domain(LookupDomainRequest {
            domain: Some(by_name("fleeting")),
        })
        .await
        .expect_err("a transient domain is gone once stopped");
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

async fn get_metadata(
    env: &mut Env,
    name: &str,
    kind: DomainMetadataType,
    uri: &str,
    flags: u32,
) -> Result<String, tonic::Status> {
    env.client
        .get_domain_metadata(GetDomainMetadataRequest {
            domain: Some(by_name(name)),
            r#type: kind as i32,
            uri: uri.into(),
            flags,
        })
        .await
        .map(|r| r.into_inner().metadata)
}

async fn set_metadata(
    env: &mut Env,
    name: &str,
    kind: DomainMetadataType,
    value: Option<&str>,
    (key, uri): (&str, &str),
    flags: u32,
) -> Result<(), tonic::Status> {
    env.client
        .set_domain_metadata(SetDomainMetadataRequest {
            domain: Some(by_name(name)),
            r#type: kind as i32,
            metadata: value.map(str::to_owned),
            key: key.into(),
            uri: uri.into(),
            flags,
        })
        .await
        .map(|_| ())
}

/// `virsh domrename`: an inactive domain gets its new name on disk and in the API, its
/// autostart link follows, the events say renamed, and the name survives a daemon restart; a
/// running domain or a taken name is refused.
#[tokio::test]
async fn an_inactive_domain_is_renamed_with_its_autostart_link() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    let uuid = env.define("before").await.uuid;
    env.define("taken").await;
    env.client
        .set_domain_autostart(SetDomainAutostartRequest {
            domain: Some(by_name("before")),
            autostart: true,
        })
        .await
        .expect("autostart");
    let mut events = env.events().await;
    let rename = |from: &str, to: &str| RenameDomainRequest {
        domain: Some(by_name(from)),
        new_name: to.into(),
        flags: 0,
    };
    let err = env
        .client
        .rename_domain(rename("before", "taken"))
        .await
        .expect_err("a taken name");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationInvalid,
        "{}",
        err.message()
    );
    let renamed = env
        .client
        .rename_domain(rename("before", "after"))
        .await
        .expect("rename")
        .into_inner()
        .domain
        .expect("domain");
    assert_eq!(
        (renamed.name.as_str(), renamed.uuid.as_str()),
        ("after", uuid.as_str())
    );
    events
        .wait(
            "before",
            is_lifecycle(
                DomainEventType::Undefined,
                Detail::Undefined(DomainEventUndefinedDetail::Renamed as i32),
            ),
        )
        .await;
    events
        .wait(
            "after",
            is_lifecycle(
                DomainEventType::Defined,
                Detail::Defined(DomainEventDefinedDetail::Renamed as i32),
            ),
        )
        .await;
    let config = env.root.path().join("etc/rvirt/qemu");
    assert!(config.join("after.xml").exists() && !config.join("before.xml").exists());
    let link = config.join("autostart/after.xml");
    assert_eq!(
        std::fs::read_link(&link).expect("autostart link"),
        config.join("after.xml")
    );
    assert!(!config.join("autostart/before.xml").exists());
    let xml = std::fs::read_to_string(config.join("after.xml")).expect("definition");
    assert!(xml.contains("<name>after</name>"), "{xml}");

    env.start("after", 0).await;
    let err = env
        .client
        .rename_domain(rename("after", "again"))
        .await
        .expect_err("running");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationInvalid,
        "{}",
        err.message()
    );
    env.destroy("after").await;
    env.daemon.signal(nix::sys::signal::Signal::SIGTERM);
    env.daemon.wait_exit(DEADLINE).await.expect("daemon exits");
    env.restart().await;
    // Autostart runs in the background after the restart: watch before looking, so the start
    // is either already visible in the state or still to come as an event.
    let mut events = env.events().await;
    // Autostarted under its new name (or about to be): it is known by it, not by the old one.
    assert!(
        env.client
            .lookup_domain(LookupDomainRequest {
                domain: Some(by_name("before"))
            })
            .await
            .is_err()
    );
    let found = env
        .client
        .lookup_domain(LookupDomainRequest {
            domain: Some(by_name("after")),
        })
        .await
        .expect("the new name after a restart")
        .into_inner();
    assert_eq!(found.domain.expect("domain").uuid, uuid);
    // Destroyed only once it runs: a destroy that came first would leave the autostarted QEMU
    // running after the test (guests outlive their daemon).
    if env.state("after").await.0 != DomainState::Running {
        events
            .wait("after", |e| {
                matches!(e, domain_event::Event::Lifecycle(l)
                    if l.r#type == DomainEventType::Started as i32)
            })
            .await;
    }
    env.destroy("after").await;
}

/// `virsh desc` and `virsh metadata`: title, description and namespaced elements, in the
/// configuration and in the running domain separately, with metadata-change events.
#[tokio::test]
async fn metadata_is_set_read_and_removed_live_and_in_the_configuration() {
    if !qemu_present() {
        return;
    }
    const LIVE: u32 = DomainAffect::Live as u32;
    const CONFIG: u32 = DomainAffect::Config as u32;
    const URI: &str = "http://example.org/rvirt-test/1";
    let mut env = Env::new().await;
    env.define("meta").await;
    let mut events = env.events().await;
    set_metadata(
        &mut env,
        "meta",
        DomainMetadataType::Title,
        Some("web server"),
        ("", ""),
        0,
    )
    .await
    .expect("title of the inactive domain");
    events
        .wait("meta", |e| matches!(e, domain_event::Event::MetadataChange(m) if m.r#type == DomainMetadataType::Title as i32))
        .await;
    let err = set_metadata(
        &mut env,
        "meta",
        DomainMetadataType::Title,
        Some("two\nlines"),
        ("", ""),
        0,
    )
    .await
    .expect_err("a title is one line");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::InvalidArg,
        "{}",
        err.message()
    );
    set_metadata(
        &mut env,
        "meta",
        DomainMetadataType::Element,
        Some("<owner team='infra'>alice</owner>"),
        ("app", URI),
        0,
    )
    .await
    .expect("an element");
    events
        .wait(
            "meta",
            |e| matches!(e, domain_event::Event::MetadataChange(m) if m.nsuri == URI),
        )
        .await;
    assert_eq!(
        get_metadata(&mut env, "meta", DomainMetadataType::Element, URI, 0)
            .await
            .expect("element"),
        format!("<app:owner xmlns:app=\"{URI}\" team='infra'>alice</app:owner>")
    );
    let xml = std::fs::read_to_string(env.root.path().join("etc/rvirt/qemu/meta.xml")).expect("definition");
    assert!(
        xml.contains("<title>web server</title>") && xml.contains("<app:owner"),
        "{xml}"
    );

    env.start("meta", 0).await;
    set_metadata(
        &mut env,
        "meta",
        DomainMetadataType::Description,
        Some("live only"),
        ("", ""),
        LIVE,
    )
    .await
    .expect("live description");
    assert_eq!(
        get_metadata(&mut env, "meta", DomainMetadataType::Description, "", LIVE)
            .await
            .expect("live"),
        "live only"
    );
    let err = get_metadata(&mut env, "meta", DomainMetadataType::Description, "", CONFIG)
        .await
        .expect_err("not in the configuration");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::NoDomainMetadata,
        "{}",
        err.message()
    );
    set_metadata(
        &mut env,
        "meta",
        DomainMetadataType::Element,
        None,
        ("", URI),
        LIVE | CONFIG,
    )
    .await
    .expect("remove the element everywhere");
    for flags in [LIVE, CONFIG] {
        let err = get_metadata(&mut env, "meta", DomainMetadataType::Element, URI, flags)
            .await
            .expect_err("removed");
        assert_eq!(
            from_status(&err).code(),
            ErrorCode::NoDomainMetadata,
            "{}",
            err.message()
        );
    }
    assert_eq!(
        get_metadata(&mut env, "meta", DomainMetadataType::Title, "", LIVE)
            .await
            .expect("title"),
        "web server"
    );
    env.destroy("meta").await;
    let err = set_metadata(
        &mut env,
        "meta",
        DomainMetadataType::Title,
        Some("x"),
        ("", ""),
        LIVE,
    )
    .await
    .expect_err("not running");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationInvalid,
        "{}",
        err.message()
    );
}

fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// virsh's `desc`, `metadata` and `domrename`, through rvirsh against virtqemud.
#[tokio::test]
async fn rvirsh_sets_descriptions_metadata_and_renames() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("shelly").await;
    let out = rvirsh(&env, &["desc", "shelly"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "No description for domain: shelly",
        "{}",
        said(&out)
    );
    let out = rvirsh(&env, &["desc", "shelly", "--title", "--new-desc", "the shell"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("Domain title updated successfully"),
        "{}",
        said(&out)
    );
    let out = rvirsh(&env, &["desc", "shelly", "--title"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "the shell",
        "{}",
        said(&out)
    );

    let uri = "http://example.org/shelly";
    let out = rvirsh(&env, &["metadata", "shelly", uri, "--set", "<role>db</role>"]);
    assert!(!out.status.success(), "a key is needed: {}", said(&out));
    assert!(said(&out).contains("namespace key is required"), "{}", said(&out));
    let out = rvirsh(
        &env,
        &[
            "metadata",
            "shelly",
            uri,
            "--key",
            "s",
            "--set",
            "<role>db</role>",
        ],
    );
    assert!(out.status.success(), "{}", said(&out));
    let out = rvirsh(&env, &["metadata", "shelly", uri]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        format!("<s:role xmlns:s=\"{uri}\">db</s:role>"),
        "{}",
        said(&out)
    );

    let out = rvirsh(&env, &["domrename", "shelly", "shell2"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("Domain successfully renamed"),
        "{}",
        said(&out)
    );
    let out = rvirsh(&env, &["list", "--all", "--title"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("shell2") && listed.contains("the shell") && !listed.contains("shelly"),
        "{listed}"
    );
    let out = rvirsh(&env, &["metadata", "shell2", uri, "--remove"]);
    assert!(said(&out).contains("Metadata removed"), "{}", said(&out));
    let out = rvirsh(&env, &["metadata", "shell2", uri]);
    assert!(!out.status.success(), "{}", said(&out));
}

async fn inactive_xml(env: &mut Env, name: &str) -> String {
    env.xml(name, DomainXmlFlag::Inactive as u32).await
}

/// `virsh setmem`/`setmaxmem`/`setvcpus`: the definition changes with libvirt's limits; a
/// running domain's memory changes through its balloon (and not without one); its maximum
/// memory and its vCPUs do not change while it runs.
#[tokio::test]
async fn memory_and_vcpus_change_in_the_definition_and_through_the_balloon() {
    if !qemu_present() {
        return;
    }
    const LIVE: u32 = DomainMemFlag::Live as u32;
    const CONFIG: u32 = DomainMemFlag::Config as u32;
    const MAXIMUM: u32 = DomainMemFlag::Maximum as u32;
    let mut env = Env::new().await;
    let disk = env.disk("mem");
    let xml = guest::domain_xml("mem", &disk, "qemu", SerialKind::Pty)
        .replace("<memballoon model='none'/>", "<memballoon model='virtio'/>");
    env.client
        .define_domain_xml(DefineDomainXmlRequest { xml, flags: 0 })
        .await
        .expect("define with a balloon");
    env.define("noballoon").await;
    let set_memory = |name: &str, kib: u64, flags: u32| SetDomainMemoryRequest {
        domain: Some(by_name(name)),
        memory_kib: kib,
        flags,
    };
    env.client
        .set_domain_memory(set_memory("mem", 64 * 1024, MAXIMUM))
        .await
        .expect("raise the maximum of the inactive domain");
    env.client
        .set_domain_memory(set_memory("mem", 48 * 1024, 0))
        .await
        .expect("current memory of the inactive domain");
    let err = env
        .client
        .set_domain_memory(set_memory("mem", 96 * 1024, 0))
        .await
        .expect_err("above the maximum");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::InvalidArg,
        "{}",
        err.message()
    );
    let xml = inactive_xml(&mut env, "mem").await;
    assert!(
        xml.contains("<memory unit='KiB'>65536</memory>")
            && xml.contains("<currentMemory unit='KiB'>49152</currentMemory>"),
        "{xml}"
    );
    env.client
        .set_domain_vcpus(SetDomainVcpusRequest {
            domain: Some(by_name("mem")),
            nvcpus: 2,
            flags: DomainVcpuFlag::Maximum as u32,
        })
        .await
        .expect("two vCPUs");
    assert!(inactive_xml(&mut env, "mem").await.contains(">2</vcpu>"));

    env.start("mem", 0).await;
    let err = env
        .client
        .set_domain_memory(set_memory("mem", 128 * 1024, MAXIMUM | LIVE))
        .await
        .expect_err("the maximum of a running domain");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationInvalid,
        "{}",
        err.message()
    );
    env.client
        .set_domain_memory(set_memory("mem", 40 * 1024, LIVE | CONFIG))
        .await
        .expect("balloon the running domain and change its definition");
    assert!(
        inactive_xml(&mut env, "mem")
            .await
            .contains("<currentMemory unit='KiB'>40960</currentMemory>")
    );
    let err = env
        .client
        .set_domain_vcpus(SetDomainVcpusRequest {
            domain: Some(by_name("mem")),
            nvcpus: 1,
            flags: 0,
        })
        .await
        .expect_err("no vCPU hotplug");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationUnsupported,
        "{}",
        err.message()
    );
    let err = env
        .client
        .abort_domain_job(AbortDomainJobRequest {
            domain: Some(by_name("mem")),
            flags: 0,
        })
        .await
        .expect_err("no job to abort");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationInvalid,
        "{}",
        err.message()
    );
    // rvirsh's setmem reaches the same call.
    let out = rvirsh(&env, &["setmem", "mem", "36M", "--live"]);
    assert!(out.status.success(), "{}", said(&out));
    env.destroy("mem").await;

    env.start("noballoon", 0).await;
    let err = env
        .client
        .set_domain_memory(set_memory("noballoon", 16 * 1024, LIVE))
        .await
        .expect_err("no balloon device");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationInvalid,
        "{}",
        err.message()
    );
    assert!(err.message().contains("balloon"), "{}", err.message());
    env.destroy("noballoon").await;
}

/// `virsh attach-device --config` / `detach-device --config`: devices join and leave the
/// definition with defining's defaults and checks, QEMU starts with what was attached, and
/// attaching to the running domain (hotplug) is refused as not supported yet.
#[tokio::test]
async fn devices_are_attached_to_and_detached_from_the_definition() {
    if !qemu_present() {
        return;
    }
    const CONFIG: u32 = DomainDeviceModifyFlag::Config as u32;
    let mut env = Env::new().await;
    env.define("dev").await;
    let extra = env.root.path().join("extra.img");
    std::fs::write(&extra, vec![0u8; 1 << 20]).expect("second disk");
    let disk = format!(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/>\
         <target dev='vdb' bus='virtio'/><alias name='ua-extra'/></disk>",
        extra.display()
    );
    let nic = "<interface type='user'><mac address='52:54:00:aa:bb:cc'/><model type='virtio'/></interface>";
    let attach = |xml: &str, flags: u32| AttachDomainDeviceRequest {
        domain: Some(by_name("dev")),
        xml: xml.to_owned(),
        flags,
    };
    env.client
        .attach_domain_device(attach(&disk, 0))
        .await
        .expect("attach a disk");
    let again = disk.replace("<alias name='ua-extra'/>", "");
    let err = env
        .client
        .attach_domain_device(attach(&again, 0))
        .await
        .expect_err("vdb again");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationFailed,
        "{}",
        err.message()
    );
    env.client
        .attach_domain_device(attach(nic, CONFIG))
        .await
        .expect("attach an interface");
    let err = env
        .client
        .attach_domain_device(attach(nic, 0))
        .await
        .expect_err("the MAC again");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::InvalidArg,
        "{}",
        err.message()
    );
    for (bad, code) in [
        (
            "<disk/></devices><on_crash>restart</on_crash><devices>",
            ErrorCode::XmlError,
        ),
        (
            "<hostdev mode='subsystem' type='pci'/>",
            ErrorCode::ConfigUnsupported,
        ),
        (
            "<disk type='file' device='disk'><target dev='vdc' bus='virtio'/><bogus/></disk>",
            ErrorCode::ConfigUnsupported,
        ),
    ] {
        let err = env
            .client
            .attach_domain_device(attach(bad, 0))
            .await
            .expect_err(bad);
        assert_eq!(from_status(&err).code(), code, "{bad}: {}", err.message());
    }
    let xml = inactive_xml(&mut env, "dev").await;
    assert!(
        xml.contains("<target dev='vdb' bus='virtio'/>") && xml.contains("52:54:00:aa:bb:cc"),
        "{xml}"
    );
    assert!(!xml.contains("on_crash>restart"), "{xml}");

    env.start("dev", 0).await;
    let live = env.xml("dev", 0).await;
    assert!(
        live.contains("<target dev='vdb' bus='virtio'/>"),
        "QEMU runs with the attached disk: {live}"
    );
    let other =
        "<disk type='file' device='disk'><source file='/dev/null'/><target dev='vdc' bus='virtio'/></disk>";
    let err = env
        .client
        .attach_domain_device(attach(other, 0))
        .await
        .expect_err("hotplug");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationUnsupported,
        "{}",
        err.message()
    );
    env.destroy("dev").await;

    let detach = |device: detach_domain_device_request::Device| DetachDomainDeviceRequest {
        domain: Some(by_name("dev")),
        device: Some(device),
        flags: CONFIG,
    };
    env.client
        .detach_domain_device(detach(detach_domain_device_request::Device::Xml(nic.to_owned())))
        .await
        .expect("detach the interface by its MAC");
    env.client
        .detach_domain_device(detach(detach_domain_device_request::Device::Alias(
            "ua-extra".into(),
        )))
        .await
        .expect("detach the disk by its alias");
    let err = env
        .client
        .detach_domain_device(detach(detach_domain_device_request::Device::Xml(disk.clone())))
        .await
        .expect_err("already gone");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::DeviceMissing,
        "{}",
        err.message()
    );
    let xml = inactive_xml(&mut env, "dev").await;
    assert!(
        !xml.contains("vdb") && !xml.contains("52:54:00:aa:bb:cc"),
        "{xml}"
    );

    // rvirsh's attach-device reaches the same call.
    let file = env.root.path().join("nic.xml");
    std::fs::write(&file, nic).expect("device file");
    let out = rvirsh(
        &env,
        &["attach-device", "dev", &file.display().to_string(), "--config"],
    );
    assert!(out.status.success(), "{}", said(&out));
    assert!(inactive_xml(&mut env, "dev").await.contains("52:54:00:aa:bb:cc"));
}

/// virsh's `attach-disk`, `detach-disk`, `attach-interface` and `detach-interface`, which build
/// or find the device's XML themselves, against virtqemud's definitions.
#[tokio::test]
async fn rvirsh_attaches_and_detaches_disks_and_interfaces() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new().await;
    env.define("box").await;
    let extra = env.root.path().join("box-data.img");
    std::fs::write(&extra, vec![0u8; 1 << 20]).expect("data disk");
    let extra = extra.display().to_string();
    let run = |env: &Env, args: &[&str]| {
        let out = rvirsh(env, args);
        assert!(out.status.success(), "{args:?}: {}", said(&out));
        said(&out)
    };
    let printed = run(
        &env,
        &[
            "attach-disk",
            "box",
            &extra,
            "vdb",
            "--targetbus",
            "virtio",
            "--print-xml",
        ],
    );
    assert!(
        printed.contains(&format!("<source file='{extra}'/>")),
        "{printed}"
    );
    assert!(
        run(
            &env,
            &[
                "attach-disk",
                "box",
                &extra,
                "vdb",
                "--targetbus",
                "virtio",
                "--config"
            ]
        )
        .contains("Disk attached successfully")
    );
    for mac in ["52:54:00:12:34:01", "52:54:00:12:34:02"] {
        assert!(
            run(
                &env,
                &[
                    "attach-interface",
                    "box",
                    "user",
                    "--mac",
                    mac,
                    "--model",
                    "virtio",
                    "--config"
                ]
            )
            .contains("Interface attached successfully")
        );
    }
    let xml = inactive_xml(&mut env, "box").await;
    assert!(
        xml.contains("<target dev='vdb' bus='virtio'/>") && xml.contains("52:54:00:12:34:02"),
        "{xml}"
    );

    let out = rvirsh(&env, &["detach-interface", "box", "user", "--config"]);
    assert!(!out.status.success(), "two user interfaces: {}", said(&out));
    assert!(said(&out).contains("Domain has 2 interfaces"), "{}", said(&out));
    assert!(
        run(
            &env,
            &[
                "detach-interface",
                "box",
                "user",
                "--mac",
                "52:54:00:12:34:01",
                "--config"
            ]
        )
        .contains("Interface detached successfully")
    );
    assert!(run(&env, &["detach-disk", "box", "vdb", "--config"]).contains("Disk detached successfully"));
    let out = rvirsh(&env, &["detach-disk", "box", "vdb", "--config"]);
    assert!(said(&out).contains("No disk found"), "{}", said(&out));
    let xml = inactive_xml(&mut env, "box").await;
    assert!(
        !xml.contains("vdb") && !xml.contains("52:54:00:12:34:01") && xml.contains("52:54:00:12:34:02"),
        "{xml}"
    );
}

/// virsh `change-media` through UpdateDomainDevice: a running guest's CD-ROM gets a medium
/// from QEMU (a missing file is QEMU's error), is ejected, and the definition changes apart;
/// other devices are not updated.
#[tokio::test]
async fn a_cdrom_medium_is_inserted_and_ejected_live_and_in_the_definition() {
    if !qemu_present() {
        return;
    }
    const LIVE: u32 = DomainDeviceModifyFlag::Live as u32;
    const CONFIG: u32 = DomainDeviceModifyFlag::Config as u32;
    let mut env = Env::new().await;
    let disk = env.disk("cd");
    let cdrom = "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>";
    let xml = guest::domain_xml("cd", &disk, "qemu", SerialKind::Pty)
        .replace("</devices>", &format!("{cdrom}\n</devices>"));
    env.client
        .define_domain_xml(DefineDomainXmlRequest { xml, flags: 0 })
        .await
        .expect("define with an empty CD-ROM");
    let iso = env.root.path().join("media.iso");
    std::fs::write(&iso, vec![0u8; 64 * 1024]).expect("medium");
    let medium = |path: &str| {
        format!(
            "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{path}'/><target dev='hdc' bus='ide'/><readonly/></disk>"
        )
    };
    let update = |xml: String, flags: u32| UpdateDomainDeviceRequest {
        domain: Some(by_name("cd")),
        xml,
        flags,
    };
    env.start("cd", 0).await;
    let iso_path = iso.display().to_string();
    env.client
        .update_domain_device(update(medium(&iso_path), LIVE))
        .await
        .expect("insert a medium into the running guest's drive");
    assert!(env.xml("cd", 0).await.contains(&iso_path));
    assert!(
        !inactive_xml(&mut env, "cd").await.contains(&iso_path),
        "LIVE leaves the definition"
    );
    let err = env
        .client
        .update_domain_device(update(medium("/nonexistent/media.iso"), LIVE))
        .await
        .expect_err("QEMU cannot open it");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationFailed,
        "{}",
        err.message()
    );
    env.client
        .update_domain_device(update(cdrom.to_owned(), LIVE))
        .await
        .expect("eject");
    assert!(!env.xml("cd", 0).await.contains(&iso_path));
    let vda = format!(
        "<disk type='file' device='disk'><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
        disk.display()
    );
    let err = env
        .client
        .update_domain_device(update(vda, LIVE))
        .await
        .expect_err("not a CD-ROM");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::OperationUnsupported,
        "{}",
        err.message()
    );
    // rvirsh's change-media builds the same call from the drive it finds in the live XML.
    let out = rvirsh(
        &env,
        &["change-media", "cd", "hdc", &iso_path, "--insert", "--live"],
    );
    assert!(
        said(&out).contains("Successfully inserted media."),
        "{}",
        said(&out)
    );
    assert!(env.xml("cd", 0).await.contains(&iso_path));
    env.destroy("cd").await;
    env.client
        .update_domain_device(update(medium(&iso_path), CONFIG))
        .await
        .expect("the medium in the definition");
    assert!(inactive_xml(&mut env, "cd").await.contains(&iso_path));
    let out = rvirsh(&env, &["change-media", "cd", &iso_path, "--eject", "--config"]);
    assert!(
        said(&out).contains("Successfully ejected media."),
        "{}",
        said(&out)
    );
    assert!(!inactive_xml(&mut env, "cd").await.contains(&iso_path));
}

#[tokio::test]
async fn object_rules_hide_and_protect_domains_however_they_are_named() {
    if !qemu_present() {
        return;
    }
    let uid = nix::unistd::geteuid().as_raw();
    let mut env = Env::with_policy(&format!(
        "[[rule]]\neffect = \"deny\"\npermission = [\"domain.start\", \"domain.getattr\"]\nuid = {uid}\nobject = \"db-*\"\n"
    ))
    .await;
    env.define("web-1").await;
    let db = env.define("db-1").await;
    // Named by its UUID, db-1 is still db-1.
    let err = env
        .client
        .start_domain(StartDomainRequest {
            domain: Some(DomainRef {
                key: Some(domain_ref::Key::Uuid(db.uuid.clone())),
            }),
            flags: 0,
        })
        .await
        .expect_err("db-1 may not start");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::AccessDenied,
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("StartDomain on 'db-1'"),
        "{}",
        err.message()
    );
    assert_eq!(env.state("db-1").await.0, DomainState::Shutoff);
    assert_eq!(env.names().await, ["web-1"]);
    // db-1's events are left out: it is undefined first, web-1 next, and the first event the
    // watcher sees is web-1's.
    let mut events = env.events().await;
    for name in ["db-1", "web-1"] {
        env.client
            .undefine_domain(UndefineDomainRequest {
                domain: Some(by_name(name)),
                flags: 0,
            })
            .await
            .expect("domain.delete is not denied");
    }
    let first = tokio::time::timeout(DEADLINE, async {
        loop {
            let message = events
                .stream
                .next()
                .await
                .expect("stream open")
                .expect("event stream");
            if let Some(watch_domain_events_response::Message::Event(event)) = message.message {
                break event;
            }
        }
    })
    .await
    .expect("an event in time");
    assert_eq!(first.domain.expect("domain").name, "web-1");
}
