//! What this host can run: the QEMU driver's capabilities.
//!
//! - [`host`]: the host itself (CPU, NUMA cells, pages, power management, IOMMU, UUID), read from
//!   `/proc` and `/sys`; [`kvm`]: whether `/dev/kvm` answers.
//! - [`emulator`]: finding `qemu-system-<arch>` per guest architecture and asking it over QMP
//!   (`-machine none`) for its version, machine types, CPU models and device types;
//!   [`cache`]: those answers cached in memory and as JSON on disk, keyed by the binary's path,
//!   size and modification time (and rvirt's version), shared by concurrent callers.
//! - [`cpu`], [`firmware`]: CPU model vendors and the host-model choice; UEFI/BIOS images.
//! - [`xml`]: the `<capabilities>` and `<domainCapabilities>` documents.
//!
//! [`QemuCaps`] ties them together. The daemon creates it at start and calls
//! [`QemuCaps::start_probe`], which probes in the background: readiness never waits for QEMU,
//! and a request that needs capabilities waits for the one probe in flight.

pub mod arch;
pub mod cache;
pub mod cpu;
pub mod emulator;
pub mod firmware;
pub mod host;
pub mod kvm;
pub mod xml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use self::arch::Arch;
use self::cache::{EmulatorCache, HostKey};
use self::emulator::{AccelCaps, EmulatorCaps, EmulatorProber, ProbeError, QmpProber};
use self::firmware::Firmware;
use self::host::HostInfo;
use self::kvm::KvmInfo;
use self::xml::*;
use crate::qmp::commands::MachineInfo;
use crate::qmp::name::Name;

/// libvirt's answer to `GetMaxVcpus` for TCG (`qemu`) and for no type at all.
pub const TCG_MAX_VCPUS: u32 = 16;

/// The `DISABLE_DEPRECATED_FEATURES` flag of `GetDomainCapabilities`.
pub const FLAG_DISABLE_DEPRECATED_FEATURES: u32 = 1;

/// Where capabilities come from and go.
#[derive(Debug, Clone)]
pub struct CapsConfig {
    /// Where the cache files go (`<driver data dir>/capabilities`).
    pub cache_dir: PathBuf,
    /// Where probe sockets go (the driver's runtime state directory).
    pub work_dir: PathBuf,
    /// Where emulators are looked for.
    pub search_path: Vec<PathBuf>,
    /// Firmware descriptor directories, lowest precedence first.
    pub firmware_dirs: Vec<PathBuf>,
    /// The root `/proc` and `/sys` are read under (`/`).
    pub host_root: PathBuf,
    /// The most time one binary may take to describe itself.
    pub probe_timeout: Duration,
}

impl CapsConfig {
    /// The configuration of a daemon with these data and runtime-state directories.
    pub fn new(data_dir: &Path, state_dir: &Path) -> CapsConfig {
        CapsConfig {
            cache_dir: data_dir.join("capabilities"),
            work_dir: state_dir.to_owned(),
            search_path: emulator::default_search_path(),
            firmware_dirs: firmware::DESCRIPTOR_DIRS.iter().map(PathBuf::from).collect(),
            host_root: PathBuf::from("/"),
            probe_timeout: Duration::from_secs(60),
        }
    }
}

/// A capabilities request that cannot be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CapsError {
    /// The request names something that does not exist or does not fit (libvirt's
    /// `VIR_ERR_INVALID_ARG`).
    #[error("{0}")]
    InvalidArg(String),
    /// The emulator asked for could not be probed.
    #[error("{0}")]
    Probe(#[from] ProbeError),
    /// The document could not be formatted.
    #[error("{0}")]
    Format(String),
}

/// What the host is, read once.
#[derive(Debug)]
pub struct HostFacts {
    /// The host.
    pub info: HostInfo,
    /// KVM, or why it is not usable.
    pub kvm: Result<KvmInfo, String>,
    /// Firmware images.
    pub firmware: Vec<Firmware>,
}

/// One guest architecture this host can run.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The architecture.
    pub arch: &'static Arch,
    /// Its emulator.
    pub emulator: Arc<EmulatorCaps>,
}

/// A virtualization type, emulator, architecture and machine type, resolved: what a domain of
/// that kind runs on. [`QemuCaps::resolve`] builds it for domain capabilities, and for starting
/// domains.
#[derive(Debug, Clone)]
pub struct Target {
    /// The emulator.
    pub emulator: Arc<EmulatorCaps>,
    /// The guest architecture.
    pub arch: &'static Arch,
    /// The machine type (canonical).
    pub machine: MachineInfo,
    /// KVM (else TCG).
    pub kvm: bool,
}

impl Target {
    /// The accelerator's capabilities.
    pub fn accel(&self) -> &AccelCaps {
        self.emulator.accel(self.kvm).unwrap_or(&self.emulator.tcg)
    }
}

/// What a domain capabilities request asks for; `None` picks the default, as libvirt does.
#[derive(Debug, Clone, Default)]
pub struct TargetQuery {
    /// The emulator binary.
    pub emulator: Option<PathBuf>,
    /// The guest architecture.
    pub arch: Option<String>,
    /// The machine type (or alias).
    pub machine: Option<String>,
    /// `kvm` or `qemu`.
    pub virt_type: Option<String>,
}

/// The QEMU driver's capabilities.
#[derive(Debug)]
pub struct QemuCaps {
    config: CapsConfig,
    host_arch: &'static Arch,
    host: OnceCell<Arc<HostFacts>>,
    prober: Arc<dyn EmulatorProber>,
    cache: OnceCell<Arc<EmulatorCache>>,
}

impl std::fmt::Debug for dyn EmulatorProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmulatorProber")
    }
}

impl QemuCaps {
    /// Capabilities probed with real QEMU processes.
    pub fn new(config: CapsConfig) -> QemuCaps {
        let host_arch = arch::host();
        let prober = Arc::new(QmpProber::new(
            config.work_dir.clone(),
            host_arch.name,
            config.probe_timeout,
        ));
        Self::with_prober(config, prober)
    }

    /// Capabilities probed through `prober` (tests count or fake probes with it).
    pub fn with_prober(config: CapsConfig, prober: Arc<dyn EmulatorProber>) -> QemuCaps {
        QemuCaps {
            config,
            host_arch: arch::host(),
            host: OnceCell::new(),
            prober,
            cache: OnceCell::new(),
        }
    }

    /// Starts probing in the background, so that the first request finds the answers ready.
    pub fn start_probe(self: &Arc<Self>) {
        let caps = Arc::clone(self);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let guests = caps.guests().await.len();
            tracing::info!(
                guests,
                ms = started.elapsed().as_millis() as u64,
                "QEMU capabilities ready"
            );
            // Each probe has forgotten the names it no longer needs (`EmulatorCache`).
            release_freed_heap();
        });
    }

    /// The host, read once (in a blocking thread: sysfs and `/dev/kvm`).
    pub async fn host(&self) -> Arc<HostFacts> {
        self.host
            .get_or_init(|| async {
                let root = self.config.host_root.clone();
                let dirs = self.config.firmware_dirs.clone();
                let arch = self.host_arch.name;
                let read = move || {
                    let kvm = kvm::probe();
                    if let Err(why) = &kvm {
                        tracing::info!("KVM is not usable: {why}");
                    }
                    HostFacts {
                        info: HostInfo::read(&root, arch),
                        kvm,
                        firmware: firmware::discover(&dirs, firmware::WELL_KNOWN),
                    }
                };
                let facts = match tokio::task::spawn_blocking(read.clone()).await {
                    Ok(facts) => facts,
                    Err(_) => read(),
                };
                Arc::new(facts)
            })
            .await
            .clone()
    }

    async fn cache(&self) -> Arc<EmulatorCache> {
        self.cache
            .get_or_init(|| async {
                let host = self.host().await;
                let kernel = nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default();
                Arc::new(EmulatorCache::new(
                    self.config.cache_dir.clone(),
                    HostKey {
                        kvm: host.kvm.is_ok(),
                        kernel,
                        microcode: host.info.cpu.microcode,
                    },
                    Arc::clone(&self.prober),
                ))
            })
            .await
            .clone()
    }

    /// The capabilities of one emulator binary (probed on first use, then cached).
    pub async fn emulator(&self, binary: &Path) -> Result<Arc<EmulatorCaps>, ProbeError> {
        self.cache().await.get(binary).await
    }

    /// The guest architectures with a working emulator, in libvirt's order. Binaries are probed
    /// concurrently; one that fails is left out (and logged).
    pub async fn guests(&self) -> Vec<Guest> {
        let cache = self.cache().await;
        let found: Vec<(&'static Arch, PathBuf)> = arch::ARCHES
            .iter()
            .filter_map(|a| {
                emulator::find_emulator(&self.config.search_path, self.host_arch.name, a).map(|p| (a, p))
            })
            .collect();
        let binaries: BTreeSet<PathBuf> = found.iter().map(|(_, p)| p.clone()).collect();
        let mut probes = tokio::task::JoinSet::new();
        for binary in binaries {
            let cache = Arc::clone(&cache);
            probes.spawn(async move {
                let caps = cache.get(&binary).await;
                (binary, caps)
            });
        }
        let mut probed: BTreeMap<PathBuf, Arc<EmulatorCaps>> = BTreeMap::new();
        while let Some(done) = probes.join_next().await {
            if let Ok((binary, Ok(caps))) = done {
                probed.insert(binary, caps);
            }
        }
        found
            .into_iter()
            .filter_map(|(arch, binary)| {
                let emulator = probed.get(&binary)?;
                arch::emulator_runs(&emulator.arch, arch.name).then(|| Guest {
                    arch,
                    emulator: Arc::clone(emulator),
                })
            })
            .collect()
    }

    fn kvm_for(&self, host: &HostFacts, emulator: &EmulatorCaps, guest: &str) -> bool {
        host.kvm.is_ok() && emulator.kvm.is_some() && arch::is_native(self.host_arch.name, guest)
    }

    /// The QEMU version the driver reports: the host architecture's emulator's, else any.
    pub async fn hypervisor_version(&self) -> Option<String> {
        let guests = self.guests().await;
        guests
            .iter()
            .find(|g| g.arch.name == self.host_arch.name)
            .or_else(|| guests.first())
            .map(|g| g.emulator.version_string())
    }

    /// Resolves what a domain of this kind runs on, with libvirt's defaults and errors.
    pub async fn resolve(&self, query: &TargetQuery) -> Result<Target, CapsError> {
        let host = self.host().await;
        let virt_type = query.virt_type.as_deref().filter(|v| !v.is_empty());
        let want_kvm = match virt_type {
            None => None,
            Some("kvm") => Some(true),
            Some("qemu") => Some(false),
            Some(other) => {
                return Err(CapsError::InvalidArg(format!(
                    "Unknown virtualization type '{other}': use 'kvm' or 'qemu'"
                )));
            }
        };
        let asked_arch = match query.arch.as_deref().filter(|a| !a.is_empty()) {
            Some(name) => Some(arch::by_name(name).ok_or_else(|| {
                CapsError::InvalidArg(format!(
                    "Unknown architecture '{name}': use a libvirt name such as x86_64"
                ))
            })?),
            None => None,
        };
        let emulator_path = query.emulator.as_ref().filter(|p| !p.as_os_str().is_empty());
        let (emulator, arch) = match emulator_path {
            Some(path) => {
                if !path.is_absolute() {
                    return Err(CapsError::InvalidArg(format!(
                        "Emulator path '{}' is not absolute: give the full path",
                        path.display()
                    )));
                }
                let emulator = self.emulator(path).await?;
                let emulator_arch = arch::by_name(&emulator.arch).ok_or_else(|| {
                    CapsError::InvalidArg(format!(
                        "Emulator '{}' emulates an unknown architecture",
                        path.display()
                    ))
                })?;
                let arch = asked_arch.unwrap_or(emulator_arch);
                if !arch::emulator_runs(&emulator.arch, arch.name) {
                    return Err(CapsError::InvalidArg(format!(
                        "Emulator '{}' does not support the {} architecture: it emulates {}",
                        path.display(),
                        arch.name,
                        emulator.arch
                    )));
                }
                (emulator, arch)
            }
            None => {
                let arch = asked_arch.unwrap_or(self.host_arch);
                let binary = emulator::find_emulator(&self.config.search_path, self.host_arch.name, arch)
                    .ok_or_else(|| {
                        CapsError::InvalidArg(format!(
                            "No emulator for the {} architecture is installed: install qemu-system-{}",
                            arch.name, arch.qemu_target
                        ))
                    })?;
                (self.emulator(&binary).await?, arch)
            }
        };
        let kvm_possible = self.kvm_for(&host, &emulator, arch.name);
        let kvm = match want_kvm {
            Some(true) if !kvm_possible => {
                return Err(CapsError::InvalidArg(format!(
                    "KVM is not supported by '{}' for {} guests on this host{}",
                    emulator.binary.display(),
                    arch.name,
                    host.kvm
                        .as_ref()
                        .err()
                        .map(|why| format!(" ({why})"))
                        .unwrap_or_default()
                )));
            }
            Some(kvm) => kvm,
            None => kvm_possible,
        };
        let accel = emulator.accel(kvm).unwrap_or(&emulator.tcg);
        let machine = match query.machine.as_deref().filter(|m| !m.is_empty()) {
            Some(name) => accel.machine(name).ok_or_else(|| {
                CapsError::InvalidArg(format!(
                    "The machine type '{name}' is not supported by emulator '{}'",
                    emulator.binary.display()
                ))
            })?,
            None => accel
                .default_machine()
                .or_else(|| accel.machines.first())
                .ok_or_else(|| {
                    CapsError::InvalidArg(format!(
                        "Emulator '{}' offers no machine type",
                        emulator.binary.display()
                    ))
                })?,
        }
        .clone();
        Ok(Target {
            emulator,
            arch,
            machine,
            kvm,
        })
    }

    /// `GetMaxVcpus`: KVM's limit for `kvm`, libvirt's 16 for `qemu` or no type.
    pub async fn max_vcpus(&self, virt_type: &str) -> Result<u32, CapsError> {
        match virt_type.to_ascii_lowercase().as_str() {
            "" | "qemu" => Ok(TCG_MAX_VCPUS),
            "kvm" => match &self.host().await.kvm {
                Ok(kvm) => Ok(kvm.max_vcpus),
                Err(why) => Err(CapsError::InvalidArg(format!(
                    "KVM is not usable on this host: {why}"
                ))),
            },
            other => Err(CapsError::InvalidArg(format!(
                "Unknown virtualization type '{other}': use 'kvm' or 'qemu'"
            ))),
        }
    }

    /// `GetCpuModelNames`: the CPU models of `arch`'s emulator, sorted.
    pub async fn cpu_model_names(&self, arch_name: &str) -> Result<Vec<String>, CapsError> {
        let target = self
            .resolve(&TargetQuery {
                arch: Some(arch_name.to_owned()),
                ..TargetQuery::default()
            })
            .await?;
        Ok(cpu::custom_models(&target.accel().cpu_models, true)
            .into_iter()
            .map(|m| m.name.to_string())
            .collect())
    }

    /// The `<capabilities>` document.
    pub async fn capabilities_xml(&self) -> Result<String, CapsError> {
        let host = self.host().await;
        let guests = self.guests().await;
        let host_model = guests
            .iter()
            .find(|g| g.arch.name == self.host_arch.name)
            .and_then(|g| g.emulator.kvm.as_ref())
            .filter(|_| host.kvm.is_ok())
            .and_then(|kvm| cpu::host_model(host.info.cpu.vendor.as_deref(), &kvm.cpu_models))
            .map(|m| m.name.to_string());
        let document = CapabilitiesXml {
            host: host_xml(&host.info, host_model),
            guest: guests
                .iter()
                .map(|g| guest_xml(g, self.kvm_for(&host, &g.emulator, g.arch.name)))
                .collect(),
        };
        rvirt_conf::xml::to_string("capabilities", &document).map_err(|e| CapsError::Format(e.to_string()))
    }

    /// The `<domainCapabilities>` document for `query`, honouring `flags`
    /// ([`FLAG_DISABLE_DEPRECATED_FEATURES`]).
    pub async fn domain_capabilities_xml(
        &self,
        query: &TargetQuery,
        flags: u32,
    ) -> Result<String, CapsError> {
        if flags & !FLAG_DISABLE_DEPRECATED_FEATURES != 0 {
            return Err(CapsError::InvalidArg(format!(
                "Unsupported flags (0x{:x}) for domain capabilities",
                flags & !FLAG_DISABLE_DEPRECATED_FEATURES
            )));
        }
        let target = self.resolve(query).await?;
        let host = self.host().await;
        let document = domain_caps_xml(&target, &host, flags & FLAG_DISABLE_DEPRECATED_FEATURES == 0);
        rvirt_conf::xml::to_string("domainCapabilities", &document)
            .map_err(|e| CapsError::Format(e.to_string()))
    }
}

fn host_xml(info: &HostInfo, model: Option<String>) -> HostXml {
    let cpu = &info.cpu;
    let topology = cpu.topology;
    HostXml {
        uuid: info.uuid.clone(),
        cpu: HostCpuXml {
            arch: info.arch.clone(),
            model,
            vendor: cpu.vendor.clone(),
            microcode: cpu.microcode.map(|version| MicrocodeXml { version }),
            signature: match (cpu.family, cpu.model, cpu.stepping) {
                (Some(family), Some(model), Some(stepping)) if family > 0 => Some(SignatureXml {
                    family,
                    model,
                    stepping,
                }),
                _ => None,
            },
            topology: CpuTopologyXml {
                sockets: topology.sockets,
                dies: topology.dies,
                clusters: topology.clusters,
                cores: topology.cores,
                threads: topology.threads,
            },
            maxphysaddr: cpu.phys_bits.map(|bits| MaxPhysAddrXml {
                mode: "emulate",
                bits,
            }),
            pages: info
                .page_sizes_kib
                .iter()
                .map(|size| PageSizeXml {
                    unit: "KiB",
                    size: *size,
                })
                .collect(),
        },
        power_management: PowerXml {
            suspend_mem: info.power.suspend_mem.then_some(Empty {}),
            suspend_disk: info.power.suspend_disk.then_some(Empty {}),
            suspend_hybrid: info.power.suspend_hybrid.then_some(Empty {}),
        },
        iommu: IommuXml {
            support: yes_no(info.iommu),
        },
        topology: TopologyXml {
            cells: CellsXml {
                num: info.cells.len(),
                cell: info
                    .cells
                    .iter()
                    .map(|cell| CellXml {
                        id: cell.id,
                        memory: MemoryXml {
                            unit: "KiB",
                            value: cell.memory_kib,
                        },
                        pages: cell
                            .pages
                            .iter()
                            .map(|(size, count)| PagesXml {
                                unit: "KiB",
                                size: *size,
                                count: *count,
                            })
                            .collect(),
                        distances: (!cell.distances.is_empty()).then(|| DistancesXml {
                            sibling: cell
                                .distances
                                .iter()
                                .map(|(id, value)| SiblingXml {
                                    id: *id,
                                    value: *value,
                                })
                                .collect(),
                        }),
                        cpus: CpusXml {
                            num: cell.cpus.len(),
                            cpu: cell
                                .cpus
                                .iter()
                                .map(|c| {
                                    let p = c.placement.as_ref();
                                    CellCpuXml {
                                        id: c.id,
                                        socket_id: p.map(|p| p.socket_id),
                                        die_id: p.map(|p| p.die_id),
                                        cluster_id: p.map(|p| p.cluster_id),
                                        core_id: p.map(|p| p.core_id),
                                        siblings: p.map(|p| p.siblings.clone()),
                                    }
                                })
                                .collect(),
                        },
                    })
                    .collect(),
            },
        },
        secmodel: vec![SecmodelXml {
            model: "none".into(),
            doi: "0".into(),
        }],
    }
}

/// The machine list of a guest as libvirt formats it: the default first, each alias after its
/// canonical machine.
fn machines_xml(machines: &[MachineInfo]) -> Vec<MachineXml> {
    let mut ordered: Vec<&MachineInfo> = machines.iter().filter(|m| m.is_default).collect();
    ordered.extend(machines.iter().filter(|m| !m.is_default));
    let mut out = Vec::new();
    for m in ordered {
        let deprecated = m.deprecated.then_some("yes");
        out.push(MachineXml {
            canonical: None,
            max_cpus: m.cpu_max,
            deprecated,
            name: m.name.to_string(),
        });
        if let Some(alias) = &m.alias {
            out.push(MachineXml {
                canonical: Some(m.name.to_string()),
                max_cpus: m.cpu_max,
                deprecated,
                name: alias.to_string(),
            });
        }
    }
    out
}

fn guest_xml(guest: &Guest, kvm: bool) -> GuestXml {
    let emulator = &guest.emulator;
    let machines = if kvm {
        emulator.kvm.as_ref().unwrap_or(&emulator.tcg)
    } else {
        &emulator.tcg
    };
    let name = guest.arch.name;
    let x86 = name == "x86_64" || name == "i686";
    let mut domain = vec![GuestDomainXml { kind: "qemu" }];
    if kvm {
        domain.push(GuestDomainXml { kind: "kvm" });
    }
    GuestXml {
        os_type: "hvm",
        arch: GuestArchXml {
            name: name.to_owned(),
            wordsize: guest.arch.wordsize,
            emulator: emulator.binary.display().to_string(),
            machine: machines_xml(&machines.machines),
            domain,
        },
        features: GuestFeaturesXml {
            pae: (name == "i686").then_some(Empty {}),
            nonpae: (name == "i686").then_some(Empty {}),
            acpi: (x86 || name == "aarch64").then_some(ToggleXml {
                default: "on",
                toggle: "yes",
            }),
            apic: x86.then_some(ToggleXml {
                default: "on",
                toggle: "no",
            }),
            cpuselection: Some(Empty {}),
            deviceboot: Some(Empty {}),
            disksnapshot: Some(ToggleXml {
                default: "on",
                toggle: "no",
            }),
        },
    }
}

/// What rvirt's domain model supports beyond what QEMU offers. Domain capabilities report a
/// feature only when both QEMU and rvirt support it: a tool that reads them must not be led to
/// write XML rvirt refuses.
pub mod support {
    /// `<iothreads>`: not in rvirt's domain model yet.
    pub const IOTHREADS: bool = false;
    /// `<hostdev>`: device assignment is not supported yet.
    pub const HOSTDEV: bool = false;
    /// Disk devices the domain model accepts.
    pub const DISK_DEVICES: &[&str] = &["disk", "cdrom"];
}

fn domain_caps_xml(target: &Target, host: &HostFacts, include_deprecated: bool) -> DomainCapsXml {
    let emulator = &target.emulator;
    let accel = target.accel();
    let arch = target.arch.name;
    let x86 = arch == "x86_64" || arch == "i686";
    let machine = &target.machine.name;
    let has = |t: &str| emulator.has_type(t);

    let mut vcpu_max = target.machine.cpu_max;
    if target.kvm
        && let Ok(kvm) = &host.kvm
    {
        vcpu_max = vcpu_max.min(kvm.max_vcpus);
    }

    // Firmware.
    let loaders: Vec<&Firmware> = host.firmware.iter().filter(|f| f.serves(arch, machine)).collect();
    let mut firmware_kinds = Vec::new();
    if x86 {
        firmware_kinds.push("bios");
    }
    if loaders.iter().any(|f| f.uefi) {
        firmware_kinds.push("efi");
    }
    let q35 = machine.starts_with("pc-q35") || machine == "q35";
    let mut secure = Vec::new();
    if q35 && loaders.iter().any(|f| f.secure_boot) {
        secure.push("yes");
    }
    secure.push("no");
    let os = OsXml {
        supported: "yes",
        enums: vec![EnumXml::new("firmware", firmware_kinds)],
        loader: LoaderXml {
            supported: "yes",
            value: loaders
                .iter()
                .map(|f| f.executable.display().to_string())
                .collect(),
            enums: vec![
                EnumXml::new("type", ["rom", "pflash"]),
                EnumXml::new("readonly", ["yes", "no"]),
                EnumXml::new("secure", secure),
            ],
        },
    };

    // CPU modes.
    let migratable = |name: &'static str| CpuModeItem::Enum(EnumXml::new(name, ["on", "off"]));
    let host_model = cpu::host_model(host.info.cpu.vendor.as_deref(), &accel.cpu_models);
    let mut custom = Vec::new();
    for model in cpu::custom_models(&accel.cpu_models, include_deprecated) {
        let (usable, blockers) = match &model.unavailable_features {
            None => ("unknown", Vec::new()),
            Some(missing) if missing.is_empty() => ("yes", Vec::new()),
            Some(missing) => {
                let mut sorted = missing.clone();
                sorted.sort();
                sorted.dedup();
                ("no", sorted)
            }
        };
        custom.push(CpuModeItem::Model(CustomModelXml {
            usable,
            deprecated: model.deprecated.then_some("yes"),
            vendor: cpu::vendor(arch, &model.name),
            canonical: model.alias_of.as_ref().map(Name::to_string),
            name: model.name.to_string(),
        }));
        if !blockers.is_empty() {
            custom.push(CpuModeItem::Blockers(BlockersXml {
                model: model.name.to_string(),
                feature: blockers
                    .into_iter()
                    .map(|name| NamedXml { name: name.into() })
                    .collect(),
            }));
        }
    }
    let cpu = CpuModesXml {
        mode: vec![
            CpuModeXml {
                name: "host-passthrough",
                supported: yes_no(target.kvm),
                items: if target.kvm {
                    vec![migratable("hostPassthroughMigratable")]
                } else {
                    Vec::new()
                },
            },
            CpuModeXml {
                name: "maximum",
                supported: "yes",
                items: vec![migratable("maximumMigratable")],
            },
            CpuModeXml {
                name: "host-model",
                supported: yes_no(host_model.is_some()),
                items: host_model
                    .map(|m| {
                        let mut items = vec![CpuModeItem::HostModel(HostModelXml {
                            fallback: "forbid",
                            name: m.name.to_string(),
                        })];
                        let vendor = cpu::vendor(arch, &m.name);
                        if vendor != "unknown" {
                            items.push(CpuModeItem::Vendor(vendor.to_owned()));
                        }
                        items
                    })
                    .unwrap_or_default(),
            },
            CpuModeXml {
                name: "custom",
                supported: yes_no(!custom.is_empty()),
                items: custom,
            },
        ],
    };

    // Devices, in libvirt's enum orders.
    let builtin_ide = machine.starts_with("pc-i440fx") || machine == "pc" || machine == "isapc";
    let mut buses = Vec::new();
    if builtin_ide {
        buses.push("ide");
    }
    if has("virtio-scsi-pci") || has("lsi53c895a") {
        buses.push("scsi");
    }
    if has("virtio-blk-pci") || has("virtio-blk-device") {
        buses.push("virtio");
    }
    if has("ich9-ahci") {
        buses.push("sata");
    }
    let mut graphics = Vec::new();
    if emulator.commands.contains("query-vnc") {
        graphics.push("vnc");
    }
    if emulator.commands.contains("query-spice") {
        graphics.push("spice");
    }
    let video: Vec<&str> = [
        ("vga", has("VGA")),
        ("cirrus", has("cirrus-vga")),
        ("vmvga", has("vmware-svga")),
        ("qxl", has("qxl-vga")),
        ("virtio", has("virtio-vga") || has("virtio-gpu-pci")),
        ("none", true),
        ("bochs", has("bochs-display")),
        ("ramfb", has("ramfb")),
    ]
    .into_iter()
    .filter_map(|(name, yes)| yes.then_some(name))
    .collect();
    let mut rng_models = Vec::new();
    if has("virtio-rng-pci") || has("virtio-rng-device") {
        rng_models.push("virtio");
    }
    if has("virtio-rng-pci-transitional") {
        rng_models.push("virtio-transitional");
    }
    if has("virtio-rng-pci-non-transitional") {
        rng_models.push("virtio-non-transitional");
    }
    let rng_backends: Vec<&str> = [
        ("random", "rng-random"),
        ("egd", "rng-egd"),
        ("builtin", "rng-builtin"),
    ]
    .into_iter()
    .filter_map(|(name, ty)| has(ty).then_some(name))
    .collect();
    let devices = DevicesXml {
        disk: SupportedEnums::new(
            !buses.is_empty(),
            vec![
                EnumXml::new("diskDevice", support::DISK_DEVICES.iter().copied()),
                EnumXml::new("bus", buses),
            ],
        ),
        graphics: SupportedEnums::new(!graphics.is_empty(), vec![EnumXml::new("type", graphics)]),
        video: SupportedEnums::new(true, vec![EnumXml::new("modelType", video)]),
        hostdev: SupportedEnums::new(support::HOSTDEV && has("vfio-pci"), Vec::new()),
        rng: SupportedEnums::new(
            !rng_models.is_empty() && !rng_backends.is_empty(),
            vec![
                EnumXml::new("model", rng_models),
                EnumXml::new("backendModel", rng_backends),
            ],
        ),
    };

    let no = || Supported::new(false);
    DomainCapsXml {
        path: emulator.binary.display().to_string(),
        domain: if target.kvm { "kvm" } else { "qemu" },
        machine: machine.to_string(),
        arch: arch.to_owned(),
        vcpu: VcpuXml { max: vcpu_max },
        iothreads: Supported::new(support::IOTHREADS && has("iothread")),
        os,
        cpu,
        devices,
        features: DomainFeaturesXml {
            gic: no(),
            vmcoreinfo: no(),
            genid: no(),
            backing_store_input: no(),
            backup: no(),
            s390_pv: no(),
            ps2: no(),
            sev: no(),
            sgx: no(),
        },
    }
}

/// Hands the heap pages freed since the daemon started back to the kernel. Reading QEMU's
/// answers during the probe (its QMP schema above all) or the capability cache peaks well above
/// what stays live, and glibc's allocator would otherwise keep those pages resident for the
/// daemon's whole life (measured: 0.3-0.5 MB of an idle daemon's RSS, `docs/qemu-bench.md`).
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
