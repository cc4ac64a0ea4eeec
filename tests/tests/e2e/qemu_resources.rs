//! End to end: what virtqemud asks the other daemons for when a domain starts — a volume's
//! path from virtstoraged (`<disk type='volume'>`), a port and a bridge from virtnetworkd
//! (`<interface type='network'>`), and the tap devices it creates itself (`type='network'` and
//! `type='bridge'`).
//!
//! Every test skips (with a message) when `qemu-system-x86_64` is not installed. Tests that
//! create taps and bridges run virtqemud (and virtnetworkd) inside a network namespace the test
//! created and deletes again, also on failure (a Drop guard): nothing touches the host's own
//! interfaces. A [`Reaper`] kills every QEMU a test's daemon left running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rvirt_e2e::guest::{self, SerialKind, Transcript};
use rvirt_e2e::netns::{Netns, check};
use rvirt_e2e::qemu::{Reaper, qemu_present, status_pid};
use rvirt_e2e::{DaemonOptions, DaemonProcess, TestRoot, channel};
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::network_service_client::NetworkServiceClient;
use rvirt_proto::v1::storage_pool_service_client::StoragePoolServiceClient;
use rvirt_proto::v1::storage_vol_service_client::StorageVolServiceClient;
use rvirt_proto::v1::*;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);
const POOL: &str = "images";
const NET: &str = "qnet";
const BRIDGE: &str = "rvqbr0";
const GUEST_MAC: &str = "52:54:00:5e:11:22";
const TAP_MAC: &str = "fe:54:00:5e:11:22";

/// What these tests ask of a namespace beyond the harness's [`Netns`].
trait NetnsExt {
    /// The names of the interfaces enslaved to `bridge`.
    fn ports_of(&self, bridge: &str) -> Vec<String>;
    /// The MAC address and whether the link is up.
    fn link(&self, name: &str) -> (String, bool);
}

impl NetnsExt for Netns {
    fn ports_of(&self, bridge: &str) -> Vec<String> {
        let out = self.ip(&["-j", "link", "show", "master", bridge]);
        assert!(out.status.success(), "ip link show master {bridge}");
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        links
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.get("ifname").and_then(|n| n.as_str()).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn link(&self, name: &str) -> (String, bool) {
        let out = self.ip(&["-j", "link", "show", "dev", name]);
        assert!(out.status.success(), "ip link show {name}");
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        let link = &links[0];
        let mac = link["address"].as_str().unwrap_or_default().to_owned();
        let up = link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP")));
        (mac, up)
    }
}

fn domain_ref(name: &str) -> Option<DomainRef> {
    Some(DomainRef {
        key: Some(domain_ref::Key::Name(name.to_owned())),
    })
}

fn pool_ref() -> Option<StoragePoolRef> {
    Some(StoragePoolRef {
        key: Some(storage_pool_ref::Key::Name(POOL.into())),
    })
}

fn net_ref() -> Option<NetworkRef> {
    Some(NetworkRef {
        key: Some(network_ref::Key::Name(NET.into())),
    })
}

/// The test guest's XML with its disk taken from volume `volume` of pool [`POOL`] (format
/// left to the volume).
fn volume_domain_xml(name: &str, volume: &str) -> String {
    let placeholder = Path::new("/placeholder.img");
    guest::domain_xml(name, placeholder, "qemu", SerialKind::Pty)
        .replace(
            "<disk type='file' device='disk'>",
            "<disk type='volume' device='disk'>",
        )
        .replace("<driver name='qemu' type='raw'/>", "<driver name='qemu'/>")
        .replace(
            "<source file='/placeholder.img'/>",
            &format!("<source pool='{POOL}' volume='{volume}'/>"),
        )
}

/// The test guest's XML with one NIC (`interface` is the whole `<interface>` element).
fn nic_domain_xml(name: &str, disk: &Path, interface: &str) -> String {
    guest::domain_xml(name, disk, "qemu", SerialKind::Pty).replace(
        "    <controller type='usb' model='none'/>",
        &format!("    {interface}\n    <controller type='usb' model='none'/>"),
    )
}

/// virtqemud (and the daemons it needs) on one root, optionally inside a namespace.
/// Fields drop in order: the reaper first (it reads the status files under the root), then
/// the daemons, then the root directory.
struct Env {
    _reaper: Reaper,
    _daemons: Vec<DaemonProcess>,
    domains: DomainServiceClient<Channel>,
    root: TestRoot,
}

impl Env {
    async fn new(others: &[&str], netns: Option<&Netns>) -> Env {
        let root = TestRoot::new();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod root");
        }
        let reaper = Reaper::new(&root);
        let options = || DaemonOptions {
            netns: netns.map(|n| n.name.clone()),
            ..Default::default()
        };
        let mut daemons = Vec::new();
        for name in others.iter().copied().chain(["virtqemud"]) {
            daemons.push(DaemonProcess::start_with(name, &root, options()).await);
        }
        let domains = DomainServiceClient::new(channel(&root.socket("virtqemud-sock")).await);
        Env {
            root,
            _daemons: daemons,
            domains,
            _reaper: reaper,
        }
    }

    async fn define(&mut self, xml: String) {
        self.domains
            .define_domain_xml(DefineDomainXmlRequest { xml, flags: 0 })
            .await
            .expect("define");
    }

    async fn start(&mut self, name: &str, flags: u32) -> Result<(), tonic::Status> {
        self.domains
            .start_domain(StartDomainRequest {
                domain: domain_ref(name),
                flags,
            })
            .await
            .map(|_| ())
    }

    async fn destroy(&mut self, name: &str) {
        self.domains
            .destroy_domain(DestroyDomainRequest {
                domain: domain_ref(name),
                flags: 0,
            })
            .await
            .expect("destroy");
    }

    async fn state(&mut self, name: &str) -> DomainState {
        let response = self
            .domains
            .get_domain_state(GetDomainStateRequest {
                domain: domain_ref(name),
            })
            .await
            .expect("state")
            .into_inner();
        DomainState::try_from(response.state).expect("known state")
    }

    async fn live_xml(&mut self, name: &str) -> String {
        self.domains
            .get_domain_xml(GetDomainXmlRequest {
                domain: domain_ref(name),
                flags: 0,
            })
            .await
            .expect("xml")
            .into_inner()
            .xml
    }

    fn disk(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(format!("{name}.img"));
        guest::write_boot_disk(&path, name).expect("boot disk");
        path
    }

    /// Defines, builds and starts a dir pool [`POOL`] under the root.
    async fn dir_pool(&self) -> StorageVolServiceClient<Channel> {
        let socket = self.root.socket("virtstoraged-sock");
        let mut pools = StoragePoolServiceClient::new(channel(&socket).await);
        let dir = self.root.path().join("pool");
        pools
            .define_storage_pool_xml(DefineStoragePoolXmlRequest {
                xml: format!(
                    "<pool type='dir'><name>{POOL}</name><target><path>{}</path></target></pool>",
                    dir.display()
                ),
                flags: 0,
            })
            .await
            .expect("define pool");
        pools
            .build_storage_pool(BuildStoragePoolRequest {
                pool: pool_ref(),
                flags: 0,
            })
            .await
            .expect("build pool");
        pools
            .start_storage_pool(StartStoragePoolRequest {
                pool: pool_ref(),
                flags: 0,
            })
            .await
            .expect("start pool");
        StorageVolServiceClient::new(channel(&socket).await)
    }
}

/// A console stream opened through the API, reading the guest's serial port.
struct Console {
    _input: tokio::sync::mpsc::Sender<OpenDomainConsoleRequest>,
    output: tonic::Streaming<OpenDomainConsoleResponse>,
    transcript: Transcript,
}

impl Console {
    async fn open(client: &mut DomainServiceClient<Channel>, name: &str) -> Console {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(OpenDomainConsoleRequest {
            message: Some(open_domain_console_request::Message::Open(DomainConsoleOpen {
                domain: domain_ref(name),
                dev_name: String::new(),
                flags: 0,
            })),
        })
        .await
        .expect("queue open");
        let mut output = client
            .open_domain_console(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("console")
            .into_inner();
        let first = tokio::time::timeout(DEADLINE, output.next())
            .await
            .expect("opened in time")
            .expect("stream open")
            .expect("opened");
        assert!(
            matches!(
                first.message,
                Some(open_domain_console_response::Message::Opened(_))
            ),
            "first console message is Opened: {first:?}"
        );
        Console {
            _input: tx,
            output,
            transcript: Transcript::default(),
        }
    }

    async fn expect(&mut self, needle: &str) {
        let wait = async {
            loop {
                if self.transcript.take_through(needle.as_bytes()).is_some() {
                    return true;
                }
                match self.output.next().await {
                    Some(Ok(OpenDomainConsoleResponse {
                        message: Some(open_domain_console_response::Message::Data(data)),
                    })) => self.transcript.push(&data),
                    _ => return false,
                }
            }
        };
        let found = tokio::time::timeout(DEADLINE, wait).await.unwrap_or(false);
        assert!(
            found,
            "console: {needle:?} not received; got {:?}",
            String::from_utf8_lossy(self.transcript.pending())
        );
    }
}

const START_PAUSED: u32 = DomainCreateFlag::StartPaused as u32;

/// Starts `name` paused, attaches a console, resumes, and waits for the guest's banner.
async fn boot_with_console(env: &mut Env, name: &str) {
    env.start(name, START_PAUSED).await.expect("start");
    let mut console = Console::open(&mut env.domains, name).await;
    env.domains
        .resume_domain(ResumeDomainRequest {
            domain: domain_ref(name),
        })
        .await
        .expect("resume");
    console.expect(&guest::banner_line(name)).await;
}

fn error_of(status: &tonic::Status) -> rvirt_proto::v1::Error {
    rvirt_proto::error::from_status(status)
}

#[tokio::test]
async fn a_guest_boots_from_a_volume_disk_resolved_by_virtstoraged() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new(&["virtstoraged"], None).await;
    let mut vols = env.dir_pool().await;
    let vol = vols
        .create_storage_vol_xml(CreateStorageVolXmlRequest {
            pool: pool_ref(),
            xml: format!(
                "<volume><name>boot.img</name><capacity unit='bytes'>{}</capacity>\
                 <target><format type='raw'/></target></volume>",
                guest::DISK_SIZE
            ),
            flags: 0,
        })
        .await
        .expect("create volume")
        .into_inner()
        .vol
        .expect("volume");
    guest::write_boot_disk(Path::new(&vol.path), "volboot").expect("write the boot sector into the volume");

    env.define(volume_domain_xml("volboot", "boot.img")).await;
    boot_with_console(&mut env, "volboot").await;
    assert_eq!(env.state("volboot").await, DomainState::Running);
    let live = env.live_xml("volboot").await;
    assert!(
        live.contains("<disk type='volume' device='disk'>")
            && live.contains(&format!("<source pool='{POOL}' volume='boot.img'")),
        "the live XML keeps type='volume': {live}"
    );
    env.destroy("volboot").await;
    assert_eq!(env.state("volboot").await, DomainState::Shutoff);
}

#[tokio::test]
async fn a_missing_volume_fails_the_start_clearly_and_the_domain_stays_defined() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new(&["virtstoraged"], None).await;
    let _vols = env.dir_pool().await;
    env.define(volume_domain_xml("novol", "absent.img")).await;
    let e = env.start("novol", 0).await.expect_err("start fails");
    let detail = error_of(&e);
    assert_eq!(detail.code(), ErrorCode::NoStorageVol, "{}", detail.message);
    for part in ["'vda'", "'absent.img'", &format!("'{POOL}'")] {
        assert!(detail.message.contains(part), "{part} in {}", detail.message);
    }
    let domain = env
        .domains
        .lookup_domain(LookupDomainRequest {
            domain: domain_ref("novol"),
        })
        .await
        .expect("still defined")
        .into_inner()
        .domain
        .expect("domain");
    assert!(domain.persistent && !domain.active);
    assert_eq!(env.state("novol").await, DomainState::Shutoff);
}

#[tokio::test]
async fn a_volume_disk_without_virtstoraged_names_the_daemon_to_start() {
    if !qemu_present() {
        return;
    }
    let mut env = Env::new(&[], None).await;
    env.define(volume_domain_xml("nostoraged", "boot.img")).await;
    let e = env.start("nostoraged", 0).await.expect_err("start fails");
    let detail = error_of(&e);
    assert_eq!(detail.code(), ErrorCode::NoConnect, "{}", detail.message);
    assert!(
        detail.message.contains("virtstoraged") && detail.message.contains("'vda'"),
        "{}",
        detail.message
    );
    assert_eq!(env.state("nostoraged").await, DomainState::Shutoff);
}

async fn list_ports(networks: &mut NetworkServiceClient<Channel>) -> Vec<NetworkPort> {
    networks
        .list_network_ports(ListNetworkPortsRequest { network: net_ref() })
        .await
        .expect("list ports")
        .into_inner()
        .ports
}

/// The tap name in the live XML's `<target dev='…'/>`.
fn target_dev(live: &str) -> String {
    let interface = live
        .find("<interface")
        .unwrap_or_else(|| panic!("no <interface> in the live XML: {live}"));
    let live = &live[interface..];
    let start = live
        .find("<target dev='")
        .unwrap_or_else(|| panic!("no <target dev> in the live XML: {live}"))
        + "<target dev='".len();
    let end = live[start..].find('\'').expect("closing quote") + start;
    live[start..end].to_owned()
}

#[tokio::test]
async fn a_network_interface_gets_a_port_and_a_tap_on_the_bridge_until_destroy() {
    if !qemu_present() {
        return;
    }
    let ns = Netns::new();
    let mut env = Env::new(&["virtnetworkd"], Some(&ns)).await;
    let mut networks = NetworkServiceClient::new(channel(&env.root.socket("virtnetworkd-sock")).await);
    networks
        .define_network_xml(DefineNetworkXmlRequest {
            xml: format!("<network><name>{NET}</name><bridge name='{BRIDGE}' stp='off'/></network>"),
            flags: 0,
        })
        .await
        .expect("define network");
    networks
        .start_network(StartNetworkRequest { network: net_ref() })
        .await
        .expect("start network");

    let disk = env.disk("netvm");
    env.define(nic_domain_xml(
        "netvm",
        &disk,
        &format!(
            "<interface type='network'><mac address='{GUEST_MAC}'/><source network='{NET}'/><model type='virtio'/></interface>"
        ),
    ))
    .await;
    env.start("netvm", 0).await.expect("start");

    let live = env.live_xml("netvm").await;
    let tap = target_dev(&live);
    assert!(
        tap.starts_with("vnet") && tap[4..].parse::<u32>().is_ok(),
        "tap named vnetN: {tap}"
    );
    assert_eq!(
        ns.ports_of(BRIDGE),
        vec![tap.clone()],
        "the tap is the bridge's only port"
    );
    assert_eq!(
        ns.link(&tap),
        (TAP_MAC.to_owned(), true),
        "guest MAC with 0xfe, and up"
    );
    let ports = list_ports(&mut networks).await;
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].owner_name, "netvm");
    assert_eq!(ports[0].mac, GUEST_MAC);
    assert_eq!(ports[0].plug_device, BRIDGE);

    env.destroy("netvm").await;
    // QEMU held the tap's only descriptor: the device went with it.
    assert!(!ns.has_link(&tap), "{tap} removed with QEMU");
    // virtqemud releases the port before it reports the domain stopped.
    assert!(
        list_ports(&mut networks).await.is_empty(),
        "the port is deleted by destroy"
    );
}

#[tokio::test]
async fn an_inactive_network_fails_the_start_and_leaves_no_tap() {
    if !qemu_present() {
        return;
    }
    let ns = Netns::new();
    let mut env = Env::new(&["virtnetworkd"], Some(&ns)).await;
    let mut networks = NetworkServiceClient::new(channel(&env.root.socket("virtnetworkd-sock")).await);
    networks
        .define_network_xml(DefineNetworkXmlRequest {
            xml: format!("<network><name>{NET}</name><bridge name='{BRIDGE}' stp='off'/></network>"),
            flags: 0,
        })
        .await
        .expect("define network");
    let disk = env.disk("offnet");
    env.define(nic_domain_xml(
        "offnet",
        &disk,
        &format!(
            "<interface type='network'><mac address='{GUEST_MAC}'/><source network='{NET}'/></interface>"
        ),
    ))
    .await;
    let e = env.start("offnet", 0).await.expect_err("start fails");
    let detail = error_of(&e);
    assert_eq!(detail.code(), ErrorCode::OperationInvalid, "{}", detail.message);
    assert!(
        detail.message.contains(&format!("'{NET}'")) && detail.message.contains("not active"),
        "{}",
        detail.message
    );
    assert!(!ns.has_link("vnet0"), "no tap left behind");
    assert_eq!(env.state("offnet").await, DomainState::Shutoff);
}

#[tokio::test]
async fn a_bridge_interface_gets_a_tap_enslaved_to_that_bridge() {
    if !qemu_present() {
        return;
    }
    let ns = Netns::new();
    check("ip", &["-n", &ns.name, "link", "add", BRIDGE, "type", "bridge"]);
    check("ip", &["-n", &ns.name, "link", "set", BRIDGE, "up"]);
    let mut env = Env::new(&[], Some(&ns)).await;
    let disk = env.disk("brvm");
    env.define(nic_domain_xml(
        "brvm",
        &disk,
        &format!(
            "<interface type='bridge'><mac address='{GUEST_MAC}'/><source bridge='{BRIDGE}'/><model type='e1000'/></interface>"
        ),
    ))
    .await;
    env.start("brvm", 0).await.expect("start");
    let tap = target_dev(&env.live_xml("brvm").await);
    assert_eq!(ns.ports_of(BRIDGE), vec![tap.clone()]);
    assert_eq!(ns.link(&tap), (TAP_MAC.to_owned(), true));
    env.destroy("brvm").await;
    assert!(!ns.has_link(&tap), "{tap} removed with QEMU");
}

#[tokio::test]
async fn a_luks_disk_boots_with_its_passphrase_from_virtsecretd_never_in_clear() {
    if !qemu_present() {
        return;
    }
    const PASSPHRASE: &str = "correct-horse-battery-staple-7731";
    const SECRET: &str = "3e3fce45-4f53-4fa7-bb32-11f34d7b4d8a";
    let mut env = Env::new(&["virtsecretd"], None).await;
    // The guest's boot sector, in a LUKS-encrypted qcow2 image.
    let raw = env.disk("luksvm");
    let image = env.root.path().join("encrypted.qcow2");
    let secret_file = env.root.path().join("passphrase");
    std::fs::write(&secret_file, PASSPHRASE).expect("passphrase file");
    check(
        "qemu-img",
        &[
            "convert",
            "--object",
            &format!("secret,id=sec0,file={}", secret_file.display()),
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0",
            &raw.to_string_lossy(),
            &image.to_string_lossy(),
        ],
    );
    std::fs::remove_file(&secret_file).expect("remove the passphrase file");
    // The secret, held by virtsecretd.
    let mut secrets = rvirt_proto::v1::secret_service_client::SecretServiceClient::new(
        channel(&env.root.socket("virtsecretd-sock")).await,
    );
    secrets
        .define_secret_xml(DefineSecretXmlRequest {
            xml: format!(
                "<secret ephemeral='no' private='yes'><uuid>{SECRET}</uuid>\
                 <usage type='volume'><volume>{}</volume></usage></secret>",
                image.display()
            ),
            flags: 0,
        })
        .await
        .expect("define the secret");
    secrets
        .set_secret_value(SetSecretValueRequest {
            secret: Some(SecretRef {
                key: Some(secret_ref::Key::Uuid(SECRET.to_owned())),
            }),
            value: PASSPHRASE.as_bytes().to_vec(),
        })
        .await
        .expect("set the passphrase");

    let xml = guest::domain_xml("luksvm", &image, "qemu", SerialKind::Pty)
        .replace(
            "<driver name='qemu' type='raw'/>",
            "<driver name='qemu' type='qcow2'/>",
        )
        .replace(
            "<target dev='vda' bus='virtio'/>",
            &format!(
                "<target dev='vda' bus='virtio'/>\n      <encryption format='luks'>\
                 <secret type='passphrase' uuid='{SECRET}'/></encryption>"
            ),
        );
    env.define(xml).await;
    boot_with_console(&mut env, "luksvm").await;
    let live = env.live_xml("luksvm").await;
    assert!(live.contains("<encryption format='luks'>"), "{live}");

    let pid = status_pid(&env.root.run_dir().join("qemu/luksvm.status")).expect("QEMU pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("encrypt.key-secret") || cmdline.contains("key-secret"),
        "{cmdline}"
    );
    assert!(
        !cmdline.contains(PASSPHRASE),
        "the passphrase is not on QEMU's command line"
    );
    env.destroy("luksvm").await;
    let log =
        std::fs::read_to_string(env.root.path().join("var/log/rvirt/qemu/luksvm.log")).unwrap_or_default();
    assert!(!log.is_empty(), "QEMU's log exists");
    assert!(!log.contains(PASSPHRASE), "the passphrase is not in QEMU's log");
}
