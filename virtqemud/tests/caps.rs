//! Host and domain capabilities: probing real QEMU binaries, the on-disk cache, and the XML
//! documents validated against libvirt's `capability.rng` and `domaincaps.rng` (with `xmllint`,
//! as `conf/tests/common` does).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rvirt_testdata::validate;
use virtqemud::caps::emulator::{AccelCaps, EmulatorCaps, EmulatorProber, ProbeError, QmpProber};
use virtqemud::caps::{CapsConfig, CapsError, QemuCaps, TargetQuery};
use virtqemud::qmp::commands::{CpuDefinitionInfo, MachineInfo, QemuVersion};
use virtqemud::qmp::name::Name;

// ---- fixtures ----

const X86_64: &str = "/usr/bin/qemu-system-x86_64";
const I386: &str = "/usr/bin/qemu-system-i386";

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A temporary driver: a `bin` directory with the emulators it may use, a cache and a work
/// directory.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// With links to the installed x86 emulators.
    fn real() -> Setup {
        let setup = Setup::empty();
        std::os::unix::fs::symlink(X86_64, setup.bin().join("qemu-system-x86_64")).expect("link");
        if Path::new(I386).exists() {
            std::os::unix::fs::symlink(I386, setup.bin().join("qemu-system-i386")).expect("link");
        }
        setup
    }

    fn empty() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("bin")).expect("bin");
        Setup { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("data/capabilities")
    }

    fn config(&self) -> CapsConfig {
        CapsConfig {
            cache_dir: self.cache_dir(),
            work_dir: self.dir.path().join("run"),
            search_path: vec![self.bin()],
            firmware_dirs: Vec::new(),
            host_root: PathBuf::from("/"),
            probe_timeout: Duration::from_secs(60),
        }
    }

    fn prober(&self) -> Arc<QmpProber> {
        Arc::new(QmpProber::new(
            self.dir.path().join("run"),
            virtqemud::caps::arch::host().name,
            Duration::from_secs(60),
        ))
    }

    /// A fake emulator binary (a file whose size and mtime key the cache).
    fn fake_binary(&self, name: &str, content: &str) -> PathBuf {
        let path = self.bin().join(name);
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }
}

/// Counts probes, passing them to another prober.
struct Counting {
    inner: Arc<dyn EmulatorProber>,
    probes: AtomicUsize,
}

impl Counting {
    fn new(inner: Arc<dyn EmulatorProber>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            probes: AtomicUsize::new(0),
        })
    }

    fn count(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl EmulatorProber for Counting {
    async fn probe(&self, binary: &Path, kvm: bool) -> Result<EmulatorCaps, ProbeError> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        self.inner.probe(binary, kvm).await
    }
}

/// Answers without running anything: an x86_64 emulator with two machines and three models.
struct Fake {
    kvm: bool,
}

fn machine(name: &str, alias: Option<&str>, default: bool, deprecated: bool) -> MachineInfo {
    MachineInfo {
        name: name.into(),
        alias: alias.map(Name::from),
        is_default: default,
        cpu_max: 288,
        hotpluggable_cpus: true,
        deprecated,
        default_cpu_type: Some("qemu64-x86_64-cpu".into()),
        default_ram_id: Some("pc.ram".into()),
        acpi: true,
    }
}

fn model(name: &str, missing: &[&str], deprecated: bool, alias_of: Option<&str>) -> CpuDefinitionInfo {
    CpuDefinitionInfo {
        name: name.into(),
        migration_safe: true,
        is_static: false,
        unavailable_features: Some(missing.iter().map(|s| Name::from(*s)).collect()),
        typename: format!("{name}-x86_64-cpu").into(),
        alias_of: alias_of.map(Name::from),
        deprecated,
    }
}

fn fake_caps(binary: &Path, kvm: bool) -> EmulatorCaps {
    let accel = AccelCaps {
        machines: vec![
            machine("pc-q35-10.0", Some("q35"), false, false),
            machine("pc-i440fx-10.0", Some("pc"), true, false),
            machine("pc-i440fx-2.12", None, false, true),
        ],
        cpu_models: vec![
            model("qemu64", &[], false, Some("qemu64-v1")),
            model("qemu64-v1", &[], false, None),
            model("EPYC-Rome", &["pku", "avx2"], false, Some("EPYC-Rome-v1")),
            model("Icelake-Client", &["avx512f"], true, None),
            model("max", &[], false, None),
        ],
    };
    EmulatorCaps {
        binary: binary.to_owned(),
        version: QemuVersion {
            major: 10,
            minor: 0,
            micro: 0,
        },
        package: "fake".into(),
        arch: "x86_64".into(),
        commands: ["query-vnc", "query-cpu-definitions"]
            .into_iter()
            .map(Name::from)
            .collect(),
        device_types: ["VGA", "virtio-blk-pci", "ich9-ahci", "virtio-rng-pci"]
            .into_iter()
            .map(Name::from)
            .collect(),
        object_types: ["rng-random", "rng-builtin", "iothread"]
            .into_iter()
            .map(Name::from)
            .collect(),
        tcg: accel.clone(),
        kvm: kvm.then_some(accel),
    }
}

#[tonic::async_trait]
impl EmulatorProber for Fake {
    async fn probe(&self, binary: &Path, kvm: bool) -> Result<EmulatorCaps, ProbeError> {
        Ok(fake_caps(binary, kvm && self.kvm))
    }
}

fn invalid_arg(result: Result<impl std::fmt::Debug, CapsError>) -> String {
    match result {
        Err(CapsError::InvalidArg(message)) => message,
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
}

// ---- real QEMU ----

#[tokio::test]
async fn capabilities_of_real_qemu_validate_and_list_guests() {
    let setup = Setup::real();
    let caps = QemuCaps::new(setup.config());
    let xml = caps.capabilities_xml().await.expect("capabilities");
    validate("capability.rng", &xml).expect("capabilities validate against capability.rng");
    let emulator = setup.bin().join("qemu-system-x86_64");
    assert!(
        xml.contains(&format!("<emulator>{}</emulator>", emulator.display())),
        "{xml}"
    );
    assert!(xml.contains("<arch name=\"x86_64\">"), "{xml}");
    assert!(xml.contains("<wordsize>64</wordsize>"));
    assert!(
        xml.contains("canonical=\"pc-q35-"),
        "q35 alias with its canonical machine: {xml}"
    );
    assert!(xml.contains(">q35</machine>") && xml.contains(">pc</machine>"));
    assert!(!xml.contains(">none</machine>"), "the none machine runs no guest");
    assert!(xml.contains("<domain type=\"qemu\"/>"));
    assert_eq!(
        xml.contains("<domain type=\"kvm\"/>"),
        kvm_usable(),
        "kvm only when /dev/kvm works"
    );
    assert!(xml.contains("<secmodel>") && xml.contains("<model>none</model>"));
    assert!(xml.contains("<cells num="), "NUMA topology: {xml}");
    if Path::new(I386).exists() {
        assert!(xml.contains("<arch name=\"i686\">"));
        assert!(xml.contains("<pae/>") && xml.contains("<nonpae/>"));
    }
}

#[tokio::test]
async fn domain_capabilities_of_real_qemu_validate_for_each_type_and_machine() {
    let setup = Setup::real();
    let caps = QemuCaps::new(setup.config());
    let mut types = vec!["qemu"];
    if kvm_usable() {
        types.push("kvm");
    }
    for virt_type in types {
        for machine in ["", "q35", "pc"] {
            let query = TargetQuery {
                virt_type: Some(virt_type.into()),
                machine: Some(machine.into()),
                ..TargetQuery::default()
            };
            let xml = caps
                .domain_capabilities_xml(&query, 0)
                .await
                .unwrap_or_else(|e| panic!("domain capabilities {virt_type}/{machine}: {e}"));
            validate("domaincaps.rng", &xml)
                .unwrap_or_else(|e| panic!("{virt_type}/{machine} does not validate: {e}"));
            assert!(xml.contains(&format!("<domain>{virt_type}</domain>")), "{xml}");
            assert!(xml.contains("<arch>x86_64</arch>"));
            let expected_machine = match machine {
                "q35" => "<machine>pc-q35-",
                _ => "<machine>pc-i440fx-",
            };
            assert!(
                xml.contains(expected_machine),
                "canonical machine for '{machine}': {xml}"
            );
            assert!(xml.contains("<mode name=\"custom\" supported=\"yes\">"));
            assert!(xml.contains(">qemu64</model>"));
            assert!(!xml.contains(">host</model>"), "host is a mode, not a model");
            assert!(xml.contains("<value>virtio</value>"));
        }
    }
}

#[tokio::test]
async fn i686_guests_default_to_the_i386_emulator() {
    if !Path::new(I386).exists() {
        return;
    }
    let setup = Setup::real();
    let caps = QemuCaps::new(setup.config());
    let query = TargetQuery {
        arch: Some("i686".into()),
        ..TargetQuery::default()
    };
    let target = caps.resolve(&query).await.expect("i686");
    assert_eq!(target.emulator.binary, setup.bin().join("qemu-system-i386"));
    assert_eq!(target.emulator.arch, "i686");
    assert_eq!(target.kvm, kvm_usable(), "x86_64 hosts run i686 guests under KVM");
    let xml = caps
        .domain_capabilities_xml(&query, 0)
        .await
        .expect("domain caps");
    validate("domaincaps.rng", &xml).expect("validates");
    // The x86_64 emulator serves i686 too when asked for by path.
    let by_path = TargetQuery {
        emulator: Some(setup.bin().join("qemu-system-x86_64")),
        arch: Some("i686".into()),
        ..TargetQuery::default()
    };
    assert_eq!(
        caps.resolve(&by_path).await.expect("i686 on x86_64").arch.name,
        "i686"
    );
}

#[tokio::test]
async fn second_start_reads_the_cache_instead_of_running_qemu() {
    let setup = Setup::real();
    let first = Counting::new(setup.prober());
    let caps = QemuCaps::with_prober(setup.config(), first.clone());
    let xml_first = caps.capabilities_xml().await.expect("capabilities");
    let binaries = if Path::new(I386).exists() { 2 } else { 1 };
    assert_eq!(first.count(), binaries, "each binary is probed once");
    let files = std::fs::read_dir(setup.cache_dir()).expect("cache dir").count();
    assert_eq!(files, binaries, "one cache file per binary");

    // A new daemon on the same cache: no QEMU runs.
    let second = Counting::new(setup.prober());
    let caps = QemuCaps::with_prober(setup.config(), second.clone());
    let xml_second = caps.capabilities_xml().await.expect("capabilities");
    assert_eq!(second.count(), 0, "the cache answered");
    let strip_cells = |x: &str| x.split("<cells").next().unwrap_or_default().len();
    assert_eq!(strip_cells(&xml_first), strip_cells(&xml_second));
    assert!(xml_second.contains("canonical=\"pc-q35-"));
}

#[tokio::test]
async fn a_binary_that_cannot_start_reports_what_it_said() {
    let setup = Setup::empty();
    let broken = setup.fake_binary(
        "qemu-system-x86_64",
        "#!/bin/sh\necho 'broken emulator: no luck' >&2\nexit 1\n",
    );
    let caps = QemuCaps::new(setup.config());
    let err = caps.emulator(&broken).await.expect_err("cannot probe");
    let text = err.to_string();
    assert!(
        text.contains("broken emulator: no luck"),
        "QEMU's words are kept: {text}"
    );
    // The host capabilities simply leave it out.
    let xml = caps.capabilities_xml().await.expect("capabilities");
    assert!(!xml.contains("<guest>"), "{xml}");
    validate("capability.rng", &xml).expect("validates without guests");
}

// ---- the cache and requests, with a fake prober ----

#[tokio::test]
async fn concurrent_requests_wait_for_one_probe() {
    let setup = Setup::empty();
    let binary = setup.fake_binary("qemu-system-x86_64", "v1");
    let counting = Counting::new(Arc::new(Fake { kvm: false }));
    let caps = Arc::new(QemuCaps::with_prober(setup.config(), counting.clone()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let caps = Arc::clone(&caps);
        let binary = binary.clone();
        tasks.push(tokio::spawn(async move {
            caps.emulator(&binary).await.map(|c| c.version)
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("caps");
    }
    assert_eq!(counting.count(), 1);
}

/// Fails its first `failures` probes with `error`, then answers like [`Fake`].
struct Failing {
    failures: AtomicUsize,
    error: fn(&Path) -> ProbeError,
}

#[tonic::async_trait]
impl EmulatorProber for Failing {
    async fn probe(&self, binary: &Path, kvm: bool) -> Result<EmulatorCaps, ProbeError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err((self.error)(binary));
        }
        Ok(fake_caps(binary, kvm))
    }
}

fn too_slow(binary: &Path) -> ProbeError {
    ProbeError::Timeout {
        binary: binary.to_owned(),
        timeout: Duration::from_secs(60),
    }
}

fn cannot_start(binary: &Path) -> ProbeError {
    ProbeError::Spawn {
        binary: binary.to_owned(),
        reason: "exec format error".into(),
    }
}

#[tokio::test]
async fn a_probe_too_slow_to_answer_is_tried_again_and_never_remembered() {
    let setup = Setup::empty();
    let binary = setup.fake_binary("qemu-system-x86_64", "slow");
    // Once: the lookup's own second try answers.
    let once = Counting::new(Arc::new(Failing {
        failures: AtomicUsize::new(1),
        error: too_slow,
    }));
    let caps = QemuCaps::with_prober(setup.config(), once.clone());
    caps.emulator(&binary).await.expect("the second try answers");
    assert_eq!(once.count(), 2);

    // Twice: this lookup fails, with the reason; the next one probes anew and succeeds.
    let _ = std::fs::remove_dir_all(setup.cache_dir());
    let twice = Counting::new(Arc::new(Failing {
        failures: AtomicUsize::new(2),
        error: too_slow,
    }));
    let caps = QemuCaps::with_prober(setup.config(), twice.clone());
    let err = caps.emulator(&binary).await.expect_err("both tries time out");
    assert!(
        err.is_transient() && err.to_string().contains("took longer than"),
        "{err}"
    );
    assert_eq!(twice.count(), 2);
    caps.emulator(&binary).await.expect("the failure was not kept");
    assert_eq!(twice.count(), 3);
    caps.emulator(&binary).await.expect("now remembered");
    assert_eq!(twice.count(), 3);
}

#[tokio::test]
async fn a_binary_that_cannot_start_is_not_probed_again_until_it_changes() {
    let setup = Setup::empty();
    let binary = setup.fake_binary("qemu-system-x86_64", "broken");
    let counting = Counting::new(Arc::new(Failing {
        failures: AtomicUsize::new(1),
        error: cannot_start,
    }));
    let caps = QemuCaps::with_prober(setup.config(), counting.clone());
    let err = caps.emulator(&binary).await.expect_err("cannot start");
    assert!(!err.is_transient(), "{err}");
    caps.emulator(&binary).await.expect_err("remembered");
    assert_eq!(counting.count(), 1, "no second try and no new probe");
    setup.fake_binary("qemu-system-x86_64", "fixed, and longer");
    caps.emulator(&binary)
        .await
        .expect("a changed binary is probed again");
    assert_eq!(counting.count(), 2);
}

#[tokio::test]
async fn a_changed_binary_is_probed_again() {
    let setup = Setup::empty();
    let binary = setup.fake_binary("qemu-system-x86_64", "version one");
    let counting = Counting::new(Arc::new(Fake { kvm: false }));
    let caps = QemuCaps::with_prober(setup.config(), counting.clone());
    caps.emulator(&binary).await.expect("first");
    caps.emulator(&binary).await.expect("again");
    assert_eq!(counting.count(), 1, "unchanged: memory answers");
    setup.fake_binary("qemu-system-x86_64", "version two, longer");
    caps.emulator(&binary).await.expect("after the upgrade");
    assert_eq!(counting.count(), 2, "a new size means a new probe");
    let restarted = QemuCaps::with_prober(setup.config(), counting.clone());
    restarted.emulator(&binary).await.expect("restart");
    assert_eq!(
        counting.count(),
        2,
        "the rewritten cache file answers after a restart"
    );
}

/// Answers as [`Fake`] does, plus one CPU model named after how many probes came before.
struct Numbered {
    probes: AtomicUsize,
}

#[tonic::async_trait]
impl EmulatorProber for Numbered {
    async fn probe(&self, binary: &Path, kvm: bool) -> Result<EmulatorCaps, ProbeError> {
        let n = self.probes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut caps = fake_caps(binary, kvm);
        caps.tcg
            .cpu_models
            .push(model(&format!("rvirt-test-upgraded-model-{n}"), &[], false, None));
        Ok(caps)
    }
}

#[tokio::test]
async fn the_names_of_replaced_capabilities_are_forgotten() {
    let setup = Setup::empty();
    let binary = setup.fake_binary("qemu-system-x86_64", "version one");
    let caps = QemuCaps::with_prober(
        setup.config(),
        Arc::new(Numbered {
            probes: AtomicUsize::new(0),
        }),
    );
    let first = caps.emulator(&binary).await.expect("first");
    assert!(Name::is_known("rvirt-test-upgraded-model-1"));
    drop(first);
    setup.fake_binary("qemu-system-x86_64", "version two, longer");
    let second = caps.emulator(&binary).await.expect("after the upgrade");
    assert!(Name::is_known("rvirt-test-upgraded-model-2"));
    assert!(
        !Name::is_known("rvirt-test-upgraded-model-1"),
        "only the replaced answer held it"
    );
    // Names still held stay.
    assert!(Name::is_known("EPYC-Rome"));
    drop(second);
}

#[tokio::test]
async fn a_corrupt_cache_file_is_replaced_by_a_probe() {
    let setup = Setup::empty();
    let binary = setup.fake_binary("qemu-system-x86_64", "v1");
    let counting = Counting::new(Arc::new(Fake { kvm: false }));
    QemuCaps::with_prober(setup.config(), counting.clone())
        .emulator(&binary)
        .await
        .expect("probe");
    for entry in std::fs::read_dir(setup.cache_dir()).expect("cache dir") {
        std::fs::write(entry.expect("entry").path(), "{ torn").expect("corrupt");
    }
    QemuCaps::with_prober(setup.config(), counting.clone())
        .emulator(&binary)
        .await
        .expect("probe again");
    assert_eq!(counting.count(), 2);
}

fn fake_setup(kvm: bool) -> (Setup, QemuCaps) {
    let setup = Setup::empty();
    setup.fake_binary("qemu-system-x86_64", "fake");
    let caps = QemuCaps::with_prober(setup.config(), Arc::new(Fake { kvm }));
    (setup, caps)
}

#[tokio::test]
async fn unknown_architecture_is_an_invalid_argument() {
    let (_setup, caps) = fake_setup(false);
    let message = invalid_arg(
        caps.resolve(&TargetQuery {
            arch: Some("z80".into()),
            ..TargetQuery::default()
        })
        .await,
    );
    assert!(message.contains("z80"), "{message}");
}

#[tokio::test]
async fn architecture_without_an_emulator_is_an_invalid_argument() {
    let (_setup, caps) = fake_setup(false);
    let message = invalid_arg(
        caps.resolve(&TargetQuery {
            arch: Some("aarch64".into()),
            ..TargetQuery::default()
        })
        .await,
    );
    assert!(
        message.contains("qemu-system-aarch64"),
        "says what to install: {message}"
    );
    let message = invalid_arg(caps.cpu_model_names("aarch64").await);
    assert!(message.contains("aarch64"), "{message}");
}

#[tokio::test]
async fn unknown_machine_and_virt_type_are_invalid_arguments() {
    let (_setup, caps) = fake_setup(false);
    let message = invalid_arg(
        caps.resolve(&TargetQuery {
            machine: Some("pc-q35-1.0".into()),
            ..TargetQuery::default()
        })
        .await,
    );
    assert!(message.contains("pc-q35-1.0"), "{message}");
    let message = invalid_arg(
        caps.resolve(&TargetQuery {
            virt_type: Some("xen".into()),
            ..TargetQuery::default()
        })
        .await,
    );
    assert!(message.contains("xen"), "{message}");
    invalid_arg(caps.max_vcpus("lxc").await);
}

#[tokio::test]
async fn emulator_for_another_architecture_is_refused() {
    let (setup, caps) = fake_setup(false);
    let message = invalid_arg(
        caps.resolve(&TargetQuery {
            emulator: Some(setup.bin().join("qemu-system-x86_64")),
            arch: Some("aarch64".into()),
            ..TargetQuery::default()
        })
        .await,
    );
    assert!(message.contains("aarch64"), "{message}");
    let message = invalid_arg(
        caps.resolve(&TargetQuery {
            emulator: Some(PathBuf::from("qemu-system-x86_64")),
            ..TargetQuery::default()
        })
        .await,
    );
    assert!(message.contains("absolute"), "{message}");
}

#[tokio::test]
async fn kvm_is_refused_when_the_emulator_has_no_kvm() {
    let (_setup, caps) = fake_setup(false);
    let message = invalid_arg(
        caps.resolve(&TargetQuery {
            virt_type: Some("kvm".into()),
            ..TargetQuery::default()
        })
        .await,
    );
    assert!(message.contains("KVM"), "{message}");
    let target = caps.resolve(&TargetQuery::default()).await.expect("default");
    assert!(!target.kvm, "the default falls back to TCG");
    assert_eq!(target.machine.name, "pc-i440fx-10.0", "the default machine");
}

#[tokio::test]
async fn machine_aliases_resolve_to_canonical_names() {
    let (_setup, caps) = fake_setup(false);
    let target = caps
        .resolve(&TargetQuery {
            machine: Some("q35".into()),
            ..TargetQuery::default()
        })
        .await
        .expect("q35");
    assert_eq!(target.machine.name, "pc-q35-10.0");
}

#[tokio::test]
async fn custom_cpu_models_carry_usability_blockers_vendor_and_canonical_names() {
    let (_setup, caps) = fake_setup(false);
    let xml = caps
        .domain_capabilities_xml(&TargetQuery::default(), 0)
        .await
        .expect("domain caps");
    validate("domaincaps.rng", &xml).expect("validates");
    assert!(
        xml.contains("<model usable=\"no\" vendor=\"AMD\" canonical=\"EPYC-Rome-v1\">EPYC-Rome</model>"),
        "{xml}"
    );
    assert!(xml.contains("<blockers model=\"EPYC-Rome\">"), "{xml}");
    assert!(xml.contains("<feature name=\"avx2\"/>") && xml.contains("<feature name=\"pku\"/>"));
    assert!(xml.contains("<model usable=\"yes\" vendor=\"unknown\" canonical=\"qemu64-v1\">qemu64</model>"));
    assert!(
        xml.contains("deprecated=\"yes\""),
        "deprecated models are marked: {xml}"
    );
    assert!(!xml.contains(">max</model>"));
}

#[tokio::test]
async fn disable_deprecated_flag_leaves_deprecated_models_out() {
    let (_setup, caps) = fake_setup(false);
    let xml = caps
        .domain_capabilities_xml(
            &TargetQuery::default(),
            virtqemud::caps::FLAG_DISABLE_DEPRECATED_FEATURES,
        )
        .await
        .expect("domain caps");
    assert!(!xml.contains("Icelake-Client"), "{xml}");
    validate("domaincaps.rng", &xml).expect("validates");
    invalid_arg(caps.domain_capabilities_xml(&TargetQuery::default(), 0x80).await);
}

#[tokio::test]
async fn vcpu_limits_follow_libvirt() {
    let (_setup, caps) = fake_setup(true);
    assert_eq!(caps.max_vcpus("qemu").await.expect("qemu"), 16);
    assert_eq!(caps.max_vcpus("").await.expect("default"), 16);
    match virtqemud::caps::kvm::probe() {
        Ok(kvm) => {
            assert_eq!(caps.max_vcpus("KVM").await.expect("kvm"), kvm.max_vcpus);
            let xml = caps
                .domain_capabilities_xml(
                    &TargetQuery {
                        virt_type: Some("kvm".into()),
                        ..TargetQuery::default()
                    },
                    0,
                )
                .await
                .expect("kvm domain caps");
            let max = 288.min(kvm.max_vcpus);
            assert!(xml.contains(&format!("<vcpu max=\"{max}\"/>")), "{xml}");
        }
        Err(_) => {
            invalid_arg(caps.max_vcpus("kvm").await);
        }
    }
}

#[tokio::test]
async fn cpu_model_names_come_from_the_emulator() {
    let (_setup, caps) = fake_setup(false);
    let names = caps.cpu_model_names("x86_64").await.expect("models");
    assert_eq!(names, vec!["EPYC-Rome", "Icelake-Client", "qemu64", "qemu64-v1"]);
}

#[tokio::test]
async fn capabilities_of_a_two_node_host_validate() {
    let setup = Setup::empty();
    setup.fake_binary("qemu-system-x86_64", "fake");
    let root = setup.dir.path().join("host");
    let write = |relative: &str, text: &str| {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "proc/cpuinfo",
        "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nstepping\t: 1\nmicrocode\t: 0x1000065\n\
         address sizes\t: 48 bits physical, 48 bits virtual\n",
    );
    write("sys/devices/system/cpu/online", "0-3\n");
    write("sys/devices/system/cpu/cpu3/topology/physical_package_id", "1\n");
    write("sys/devices/system/cpu/cpu3/topology/core_id", "1\n");
    write("sys/devices/system/cpu/cpu3/topology/thread_siblings_list", "3\n");
    for node in 0..2 {
        let base = format!("sys/devices/system/node/node{node}");
        write(
            &format!("{base}/cpulist"),
            &format!("{}-{}\n", node * 2, node * 2 + 1),
        );
        write(
            &format!("{base}/distance"),
            if node == 0 { "10 32\n" } else { "32 10\n" },
        );
        write(&format!("{base}/meminfo"), "Node 0 MemTotal:       2097152 kB\n");
        write(
            &format!("{base}/hugepages/hugepages-1048576kB/nr_hugepages"),
            "1\n",
        );
    }
    write("sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "2\n");
    write("sys/power/state", "mem\n");
    let config = CapsConfig {
        host_root: root.clone(),
        ..setup.config()
    };
    let caps = QemuCaps::with_prober(config, Arc::new(Fake { kvm: false }));
    let xml = caps.capabilities_xml().await.expect("capabilities");
    validate("capability.rng", &xml).expect("validates");
    assert!(xml.contains("<cells num=\"2\">"), "{xml}");
    assert!(xml.contains("<sibling id=\"1\" value=\"32\"/>"), "{xml}");
    assert!(
        xml.contains("<pages unit=\"KiB\" size=\"1048576\">1</pages>"),
        "{xml}"
    );
    assert!(
        xml.contains(
            "<cpu id=\"3\" socket_id=\"1\" die_id=\"0\" cluster_id=\"0\" core_id=\"1\" siblings=\"3\"/>"
        ),
        "{xml}"
    );
    assert!(
        xml.contains("<cpu id=\"0\"/>"),
        "a CPU without topology files has no placement: {xml}"
    );
    assert!(xml.contains("<vendor>AMD</vendor>"));
    assert!(xml.contains("<signature family=\"25\" model=\"17\" stepping=\"1\"/>"));
    assert!(xml.contains("<microcode version=\"16777317\"/>"));
    assert!(xml.contains("<suspend_mem/>") && !xml.contains("<suspend_disk/>"));
}

/// The value of attribute `name` in one line of libvirt's capability cache XML.
fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}='"))? + name.len() + 3;
    let len = line[start..].find('\'')?;
    Some(&line[start..start + len])
}

#[tokio::test]
async fn probed_machines_and_cpu_models_match_libvirts_qemu_10_0_data() {
    let setup = Setup::real();
    let caps = QemuCaps::new(setup.config());
    let emulator = caps
        .emulator(&setup.bin().join("qemu-system-x86_64"))
        .await
        .expect("probe");
    if (emulator.version.major, emulator.version.minor) != (10, 0) {
        eprintln!(
            "QEMU {} is not 10.0: libvirt's 10.0.0 data does not apply",
            emulator.version
        );
        return;
    }
    let data = rvirt_testdata::read("tests/qemucapabilitiesdata/caps_10.0.0_x86_64.xml");
    // Machine types: same names, aliases, default, deprecation and CPU limits.
    for line in data
        .lines()
        .filter(|l| l.trim_start().starts_with("<machine type='tcg'"))
    {
        let name = attr(line, "name").expect("name");
        let ours = emulator
            .tcg
            .machines
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("machine {name} missing from the probe"));
        assert_eq!(ours.alias.as_deref(), attr(line, "alias"), "{name} alias");
        assert_eq!(
            ours.is_default,
            attr(line, "default") == Some("yes"),
            "{name} default"
        );
        assert_eq!(
            ours.deprecated,
            attr(line, "deprecated") == Some("yes"),
            "{name} deprecated"
        );
        assert_eq!(
            Some(ours.cpu_max.to_string().as_str()),
            attr(line, "maxCpus"),
            "{name} maxCpus"
        );
    }
    let libvirt_machines = data
        .lines()
        .filter(|l| l.trim_start().starts_with("<machine type='tcg'"))
        .count();
    assert_eq!(
        emulator.tcg.machines.len(),
        libvirt_machines,
        "no machine more than libvirt lists"
    );
    // CPU models: the same names and canonical names.
    let libvirt_models: std::collections::BTreeSet<&str> = data
        .lines()
        .filter(|l| l.trim_start().starts_with("<cpu type='tcg'"))
        .filter_map(|l| attr(l, "name"))
        .collect();
    let ours: std::collections::BTreeSet<&str> =
        emulator.tcg.cpu_models.iter().map(|m| m.name.as_str()).collect();
    let missing: Vec<_> = libvirt_models.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&libvirt_models).collect();
    assert!(
        missing.is_empty(),
        "models libvirt knows that the probe lacks: {missing:?}"
    );
    // Micro releases may add a version of a known model (10.0.2 adds YongFeng-v2).
    let known_family = |m: &str| libvirt_models.contains(virtqemud::caps::cpu::family(m));
    assert!(
        extra
            .iter()
            .all(|m| ["host", "max", "base"].contains(*m) || known_family(m)),
        "unexpected models: {extra:?}"
    );
}
