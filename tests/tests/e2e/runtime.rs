//! The shared daemon runtime, exercised through real daemon processes on a temporary
//! `RVIRT_ROOT`: readiness, sockets and their permissions, the read-only socket, the lock against
//! a second instance, socket activation, idle exit, SIGTERM, SIGHUP, the admin service, health
//! and reflection, and busy polling that stops once calls stop.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use nix::sys::signal::Signal;
use rvirt_e2e::{DAEMON_DEADLINE, DaemonOptions, DaemonProcess, TestRoot, channel, raw};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::admin_service_client::AdminServiceClient;
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::host_service_client::HostServiceClient;
use rvirt_proto::v1::*;

const DAEMONS: [(&str, &str); 5] = [
    ("virtqemud", "virtqemud"),
    ("virtnetworkd", "virtnetworkd"),
    ("virtstoraged", "virtstoraged"),
    ("virtsecretd", "virtsecretd"),
    ("virtproxyd", "rvirt"),
];

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn every_daemon_starts_answers_and_stops_on_sigterm() {
    for (daemon, sockets) in DAEMONS {
        let root = TestRoot::new();
        let mut process = DaemonProcess::start(daemon, &root).await;
        let rw = root.socket(&format!("{sockets}-sock"));
        let ro = root.socket(&format!("{sockets}-sock-ro"));
        let admin = root.socket(&format!("{sockets}-admin-sock"));
        assert_eq!(mode_of(&rw), 0o666, "{daemon} rw socket");
        assert_eq!(mode_of(&ro), 0o666, "{daemon} ro socket");
        assert_eq!(mode_of(&admin), 0o600, "{daemon} admin socket");

        let mut host = HostServiceClient::new(channel(&rw).await);
        if daemon == "virtproxyd" {
            // The proxy routes host calls by URI: the in-process test driver answers this one.
            let request = rvirt_e2e::at("test:///default", GetTypeRequest {});
            let reply = host
                .get_type(request)
                .await
                .expect("GetType through the proxy")
                .into_inner();
            assert_eq!(reply.r#type, "TEST");
        } else {
            let version = host
                .get_version(GetVersionRequest {})
                .await
                .expect("GetVersion")
                .into_inner();
            assert_eq!(
                version.library_version_string,
                env!("CARGO_PKG_VERSION"),
                "{daemon}"
            );
            assert_eq!(version.libvirt_api_version, 11_003_000);
            let info = host
                .get_connection_info(GetConnectionInfoRequest {})
                .await
                .expect("info")
                .into_inner();
            assert_eq!(info.daemon, daemon);
            assert_eq!(info.pid, Some(std::process::id()));
        }

        let mut admin_client = AdminServiceClient::new(channel(&admin).await);
        let server = admin_client
            .get_server_info(GetServerInfoRequest {})
            .await
            .expect("server info")
            .into_inner();
        assert_eq!(server.daemon, daemon);
        assert_eq!(server.pid, process.pid());
        drop(host);
        drop(admin_client);

        process.signal(Signal::SIGTERM);
        let (status, log) = process
            .wait_exit(DAEMON_DEADLINE)
            .await
            .expect("exit after SIGTERM");
        assert!(status.success(), "{daemon} exited with {status}: {log}");
        for path in [&rw, &ro, &admin] {
            assert!(!path.exists(), "{} left behind", path.display());
        }
        assert!(
            !root.run_dir().join(format!("{daemon}.pid")).exists(),
            "{daemon} pid file left behind"
        );
    }
}

#[tokio::test]
async fn read_only_socket_refuses_write_calls_with_operation_denied() {
    let root = TestRoot::new();
    let _daemon = DaemonProcess::start("virtqemud", &root).await;
    let ro = channel(&root.socket("virtqemud-sock-ro")).await;

    let mut domains = DomainServiceClient::new(ro.clone());
    let start = StartDomainRequest {
        domain: Some(DomainRef {
            key: Some(domain_ref::Key::Name("web".into())),
        }),
        ..Default::default()
    };
    let err = domains
        .start_domain(start.clone())
        .await
        .expect_err("write on the read-only socket");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let detail = from_status(&err);
    assert_eq!(detail.code(), ErrorCode::OperationDenied);
    assert!(detail.message.contains("read-only"), "{}", detail.message);

    // Reads pass on the read-only socket, and the connection knows it is read-only.
    let mut host = HostServiceClient::new(ro);
    let info = host
        .get_connection_info(GetConnectionInfoRequest {})
        .await
        .expect("read call")
        .into_inner();
    assert!(info.read_only);

    // The same write on the read-write socket passes the access check (no domain driver yet).
    let mut rw = DomainServiceClient::new(channel(&root.socket("virtqemud-sock")).await);
    let err = rw.start_domain(start).await.expect_err("no domain driver yet");
    assert_ne!(from_status(&err).code(), ErrorCode::OperationDenied);
}

#[tokio::test]
async fn second_instance_on_the_same_paths_is_refused() {
    let root = TestRoot::new();
    let first = DaemonProcess::start("virtsecretd", &root).await;
    let mut second = DaemonProcess::spawn("virtsecretd", &root, DaemonOptions::default());
    let (status, log) = second
        .wait_exit(DAEMON_DEADLINE)
        .await
        .expect("the second instance exits");
    assert!(!status.success());
    assert!(log.contains("already running"), "{log}");
    assert!(log.contains(&format!("pid {}", first.pid())), "{log}");
    // The first one is untouched and still serves.
    let mut host = HostServiceClient::new(channel(&root.socket("virtsecretd-sock")).await);
    host.get_hostname(GetHostnameRequest {})
        .await
        .expect("first instance still serves");
}

#[tokio::test]
async fn idle_timeout_exits_only_when_no_client_is_connected() {
    let root = TestRoot::new();
    let options = DaemonOptions {
        args: vec!["--timeout".into(), "1".into()],
        ..Default::default()
    };
    let mut daemon = DaemonProcess::start_with("virtnetworkd", &root, options).await;
    let mut host = HostServiceClient::new(channel(&root.socket("virtnetworkd-sock")).await);
    host.get_type(GetTypeRequest {}).await.expect("call");
    // With a client connected, three timeouts pass and the daemon stays.
    assert!(
        daemon.wait_exit(Duration::from_secs(3)).await.is_none(),
        "exited with a client connected"
    );
    drop(host);
    let (status, log) = daemon
        .wait_exit(DAEMON_DEADLINE)
        .await
        .expect("idle exit once the client left");
    assert!(status.success(), "{log}");
    assert!(log.contains("idle timeout"), "{log}");
    assert!(!root.socket("virtnetworkd-sock").exists());
}

#[tokio::test]
async fn socket_activation_serves_the_passed_sockets_and_leaves_them_to_systemd() {
    let root = TestRoot::new();
    std::fs::create_dir_all(root.run_dir()).expect("run dir");
    let bind = |name: &str| {
        std::os::unix::net::UnixListener::bind(root.socket(name)).expect("bind activation socket")
    };
    let rw = bind("virtstoraged-sock");
    let ro = bind("virtstoraged-sock-ro");
    let admin = bind("virtstoraged-admin-sock");
    // Permissions set by "systemd" stay as they are.
    std::fs::set_permissions(
        root.socket("virtstoraged-sock"),
        std::fs::Permissions::from_mode(0o660),
    )
    .expect("chmod");
    let options = DaemonOptions {
        activated: vec![
            (raw(&rw), "virtstoraged.socket".into()),
            (raw(&ro), "virtstoraged-ro.socket".into()),
            (raw(&admin), "virtstoraged-admin.socket".into()),
        ],
        ..Default::default()
    };
    let mut daemon = DaemonProcess::start_with("virtstoraged", &root, options).await;
    drop((rw, ro, admin));
    assert_eq!(mode_of(&root.socket("virtstoraged-sock")), 0o660);

    let mut host = HostServiceClient::new(channel(&root.socket("virtstoraged-sock-ro")).await);
    let info = host
        .get_connection_info(GetConnectionInfoRequest {})
        .await
        .expect("ro")
        .into_inner();
    assert!(
        info.read_only,
        "the fd named virtstoraged-ro.socket is the read-only socket"
    );
    let mut host = HostServiceClient::new(channel(&root.socket("virtstoraged-sock")).await);
    let info = host
        .get_connection_info(GetConnectionInfoRequest {})
        .await
        .expect("rw")
        .into_inner();
    assert!(!info.read_only);
    let mut admin = AdminServiceClient::new(channel(&root.socket("virtstoraged-admin-sock")).await);
    let server = admin
        .get_server_info(GetServerInfoRequest {})
        .await
        .expect("admin")
        .into_inner();
    assert!(server.sockets.iter().all(|s| s.activated), "{:?}", server.sockets);
    drop((host, admin));

    daemon.signal(Signal::SIGTERM);
    let (status, log) = daemon.wait_exit(DAEMON_DEADLINE).await.expect("exit");
    assert!(status.success(), "{log}");
    assert!(
        root.socket("virtstoraged-sock").exists(),
        "activated sockets belong to systemd"
    );
}

#[tokio::test]
async fn admin_lists_the_connected_client_with_its_identity_and_can_close_it() {
    let root = TestRoot::new();
    let _daemon = DaemonProcess::start("virtqemud", &root).await;
    let mut host = HostServiceClient::new(channel(&root.socket("virtqemud-sock")).await);
    host.get_hostname(GetHostnameRequest {})
        .await
        .expect("call on rw");

    let mut admin = AdminServiceClient::new(channel(&root.socket("virtqemud-admin-sock")).await);
    let clients = admin
        .list_clients(ListClientsRequest {})
        .await
        .expect("ListClients")
        .into_inner()
        .clients;
    let rw: Vec<&Client> = clients
        .iter()
        .filter(|c| c.socket() == ListenerKind::ReadWrite)
        .collect();
    assert_eq!(rw.len(), 1, "{clients:?}");
    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(rw[0].uid, Some(me));
    assert_eq!(rw[0].pid, Some(std::process::id()));
    assert_eq!(rw[0].transport(), ClientTransport::Unix);
    assert!(
        clients.iter().any(|c| c.socket() == ListenerKind::Admin),
        "the admin connection is listed too"
    );

    let id = rw[0].id;
    let one = admin
        .get_client_info(GetClientInfoRequest { id })
        .await
        .expect("GetClientInfo")
        .into_inner();
    assert_eq!(one.client.map(|c| c.id), Some(id));

    admin
        .close_client(CloseClientRequest { id })
        .await
        .expect("CloseClient");
    let err = admin
        .get_client_info(GetClientInfoRequest { id })
        .await
        .expect_err("gone");
    assert_eq!(from_status(&err).code(), ErrorCode::NoClient);
    // The client's channel notices, reconnects, and is a new client.
    host.get_hostname(GetHostnameRequest {})
        .await
        .expect("a reconnected call");
    let clients = admin
        .list_clients(ListClientsRequest {})
        .await
        .expect("ListClients")
        .into_inner()
        .clients;
    let rw: Vec<u64> = clients
        .iter()
        .filter(|c| c.socket() == ListenerKind::ReadWrite)
        .map(|c| c.id)
        .collect();
    assert_eq!(rw.len(), 1, "{clients:?}");
    assert_ne!(rw[0], id);

    // The admin service lives on the admin socket only.
    let mut on_rw = AdminServiceClient::new(channel(&root.socket("virtqemud-sock")).await);
    let err = on_rw
        .list_clients(ListClientsRequest {})
        .await
        .expect_err("admin on rw");
    assert_eq!(from_status(&err).code(), ErrorCode::OperationUnsupported);
}

#[tokio::test]
async fn health_and_reflection_answer_on_every_socket() {
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    use tonic_reflection::pb::{v1, v1alpha};

    let root = TestRoot::new();
    let _daemon = DaemonProcess::start("virtqemud", &root).await;
    for socket in ["virtqemud-sock", "virtqemud-sock-ro", "virtqemud-admin-sock"] {
        let channel = channel(&root.socket(socket)).await;
        let service = if socket.contains("admin") {
            "rvirt.v1.AdminService"
        } else {
            "rvirt.v1.HostService"
        };
        let mut health = HealthClient::new(channel.clone());
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health on {socket}: {e}"))
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service} on {socket}");

        let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut replies = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1")
            .into_inner();
        let reply = replies
            .next()
            .await
            .expect("a reply")
            .expect("reflection v1 reply");
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            reply.message_response
        else {
            panic!("unexpected reflection reply on {socket}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == service), "{names:?} on {socket}");

        let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::FileContainingSymbol(service.into())),
        };
        let mut replies = alpha
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let reply = replies
            .next()
            .await
            .expect("a reply")
            .expect("reflection v1alpha reply");
        let Some(AlphaResponse::FileDescriptorResponse(files)) = reply.message_response else {
            panic!("v1alpha did not return the descriptor of {service}");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

#[tokio::test]
async fn sighup_reloads_the_configuration() {
    let root = TestRoot::new();
    let config = root.path().join("etc/rvirt/virtsecretd.conf");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("config dir");
    std::fs::write(&config, "log_filters = \"info\"\nmax_clients = 7\n").expect("config");
    let options = DaemonOptions {
        env: vec![("RVIRT_LOG".into(), String::new())],
        ..Default::default()
    };
    let mut daemon = DaemonProcess::start_with("virtsecretd", &root, options).await;
    let mut admin = AdminServiceClient::new(channel(&root.socket("virtsecretd-admin-sock")).await);
    let info = admin
        .get_server_info(GetServerInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.max_clients, 7);

    std::fs::write(
        &config,
        "log_filters = \"warn,rvirt_daemon=debug\"\nmax_clients = 9\n",
    )
    .expect("config");
    daemon.signal(Signal::SIGHUP);
    daemon.wait_notify("RELOADING=1").await;
    daemon.wait_notify("READY=1").await;
    let info = admin
        .get_server_info(GetServerInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.max_clients, 9);
    let filters = admin
        .get_log_filters(GetLogFiltersRequest {})
        .await
        .expect("filters")
        .into_inner();
    assert_eq!(filters.filters, "warn,rvirt_daemon=debug");

    // A broken file is refused and the running configuration stays.
    std::fs::write(&config, "max_clientz = 1\n").expect("config");
    let err = admin.reload(ReloadRequest {}).await.expect_err("bad config");
    assert!(err.message().contains("max_clientz"), "{}", err.message());
    let info = admin
        .get_server_info(GetServerInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.max_clients, 9);
}

#[tokio::test]
async fn clients_beyond_max_clients_are_refused_and_others_unaffected() {
    let root = TestRoot::new();
    let _daemon = DaemonProcess::start("virtnetworkd", &root).await;
    let mut admin = AdminServiceClient::new(channel(&root.socket("virtnetworkd-admin-sock")).await);
    let limits = admin
        .set_server_limits(SetServerLimitsRequest {
            max_clients: Some(1),
            admin_max_clients: None,
        })
        .await
        .expect("limits")
        .into_inner();
    assert_eq!(limits.max_clients, 1);
    let mut first = HostServiceClient::new(channel(&root.socket("virtnetworkd-sock")).await);
    first.get_type(GetTypeRequest {}).await.expect("first client");
    // The second connection is accepted by the kernel and closed at once by the daemon.
    let refused = match rvirt::transport::unix_channel(&root.socket("virtnetworkd-sock-ro")).await {
        Ok(channel) => HostServiceClient::new(channel)
            .get_type(GetTypeRequest {})
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client beyond max_clients was served");
    first
        .get_type(GetTypeRequest {})
        .await
        .expect("the first client is unaffected");
}

/// The CPU time (user + system) process `pid` has used, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .expect("sysconf")
        .expect("CLK_TCK") as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

#[tokio::test]
async fn a_daemon_stops_polling_once_calls_stop() {
    // Busy polling is on by default: calls back to back grow the window, and once they stop
    // the daemon must go back to sleep rather than spin.
    let root = TestRoot::new();
    let daemon = DaemonProcess::start("virtsecretd", &root).await;
    let mut host = HostServiceClient::new(channel(&root.socket("virtsecretd-sock")).await);
    let before = cpu_time(daemon.pid());
    for _ in 0..300 {
        host.get_type(GetTypeRequest {}).await.expect("get type");
    }
    let busy = cpu_time(daemon.pid()).saturating_sub(before);
    // The idle span is the measure itself: a daemon still polling would use most of a core.
    let idle_from = cpu_time(daemon.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = cpu_time(daemon.pid()).saturating_sub(idle_from);
    assert!(busy > Duration::ZERO, "the calls cost no CPU at all?");
    assert!(
        idle <= Duration::from_millis(50),
        "the idle daemon used {idle:?} of CPU in 500 ms"
    );
}
