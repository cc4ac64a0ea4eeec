//! Facts about the host for the capabilities XML, read from `/proc` and `/sys` (under a root
//! directory, so tests can point it at a fabricated tree): CPU identity and topology, NUMA
//! cells with their memory, pages, distances and CPUs, power management, IOMMU, and the host
//! UUID.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The host CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpu {
    /// libvirt's vendor name (`AMD`, `Intel`, `Hygon`), from `vendor_id`.
    pub vendor: Option<String>,
    /// `cpu family`.
    pub family: Option<u32>,
    /// `model`.
    pub model: Option<u32>,
    /// `stepping`.
    pub stepping: Option<u32>,
    /// The microcode revision.
    pub microcode: Option<u64>,
    /// Physical address bits.
    pub phys_bits: Option<u32>,
    /// The `flags` line.
    pub flags: BTreeSet<String>,
    /// Sockets, dies, clusters, cores per die, threads per core.
    pub topology: Topology,
}

/// CPU topology as libvirt's `<topology>` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Sockets.
    pub sockets: u32,
    /// Dies per socket.
    pub dies: u32,
    /// Clusters per die.
    pub clusters: u32,
    /// Cores per cluster.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            sockets: 1,
            dies: 1,
            clusters: 1,
            cores: 1,
            threads: 1,
        }
    }
}

/// One host CPU in a NUMA cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellCpu {
    /// Its number.
    pub id: u32,
    /// Where it sits (absent for offline CPUs, whose topology the kernel hides).
    pub placement: Option<CpuPlacement>,
}

/// Where a CPU sits in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPlacement {
    /// `physical_package_id`.
    pub socket_id: u32,
    /// `die_id`.
    pub die_id: u32,
    /// `cluster_id`.
    pub cluster_id: u32,
    /// `core_id`.
    pub core_id: u32,
    /// Its hyperthread siblings, as a CPU list (`0,8`).
    pub siblings: String,
}

/// One NUMA cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaCell {
    /// The node number.
    pub id: u32,
    /// Its memory in KiB.
    pub memory_kib: u64,
    /// Page sizes in KiB and how many pages of each it has.
    pub pages: Vec<(u64, u64)>,
    /// Distances to each node (node, distance).
    pub distances: Vec<(u32, u32)>,
    /// Its CPUs.
    pub cpus: Vec<CellCpu>,
}

/// Which sleep states the host supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerManagement {
    /// Suspend to RAM.
    pub suspend_mem: bool,
    /// Suspend to disk.
    pub suspend_disk: bool,
    /// Hybrid suspend.
    pub suspend_hybrid: bool,
}

/// Everything the capabilities XML says about the host itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// libvirt's name for the host architecture.
    pub arch: String,
    /// The host's UUID.
    pub uuid: String,
    /// The CPU.
    pub cpu: HostCpu,
    /// Page sizes in KiB (the base page first, then huge pages).
    pub page_sizes_kib: Vec<u64>,
    /// Sleep states.
    pub power: PowerManagement,
    /// Whether an IOMMU is active (`/sys/kernel/iommu_groups` has groups).
    pub iommu: bool,
    /// NUMA cells (one covering the whole host when the kernel reports none).
    pub cells: Vec<NumaCell>,
}

impl HostInfo {
    /// Reads the host through `root` (`/` for the real host).
    pub fn read(root: &Path, arch: &str) -> HostInfo {
        let host = HostFiles {
            root: root.to_owned(),
        };
        let page_kib = base_page_kib();
        let mut page_sizes_kib = vec![page_kib];
        page_sizes_kib.extend(host.huge_page_sizes("sys/kernel/mm/hugepages"));
        let cells = host.cells(page_kib, &page_sizes_kib);
        HostInfo {
            arch: arch.to_owned(),
            uuid: host.uuid(),
            cpu: host.cpu(),
            page_sizes_kib,
            power: host.power(),
            iommu: host
                .read_dir("sys/kernel/iommu_groups")
                .is_some_and(|entries| !entries.is_empty()),
            cells,
        }
    }
}

fn base_page_kib() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|b| u64::try_from(b).ok())
        .map_or(4, |b| (b / 1024).max(1))
}

struct HostFiles {
    root: PathBuf,
}

impl HostFiles {
    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn read(&self, relative: &str) -> Option<String> {
        std::fs::read_to_string(self.path(relative)).ok()
    }

    fn read_u64(&self, relative: &str) -> Option<u64> {
        self.read(relative)?.trim().parse().ok()
    }

    fn read_dir(&self, relative: &str) -> Option<Vec<String>> {
        let dir = std::fs::read_dir(self.path(relative)).ok()?;
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Some(names)
    }

    /// Huge page sizes in KiB from a `hugepages` directory (`hugepages-2048kB`).
    fn huge_page_sizes(&self, relative: &str) -> Vec<u64> {
        let mut sizes: Vec<u64> = self
            .read_dir(relative)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok())
            .collect();
        sizes.sort_unstable();
        sizes
    }

    fn uuid(&self) -> String {
        let usable = |text: &str| {
            let uuid = rvirt_conf::xml::canonical_uuid(text)?;
            // Firmware often fills the field with one repeated digit: not an identity.
            let digits: BTreeSet<char> = uuid.chars().filter(|c| *c != '-').collect();
            (digits.len() > 1).then_some(uuid)
        };
        for file in [
            "sys/class/dmi/id/product_uuid",
            "sys/devices/virtual/dmi/id/product_uuid",
        ] {
            if let Some(uuid) = self.read(file).as_deref().and_then(usable) {
                return uuid;
            }
        }
        if let Some(uuid) = self.read("etc/machine-id").as_deref().and_then(usable) {
            return uuid;
        }
        rvirt_conf::xml::new_uuid()
    }

    fn cpu(&self) -> HostCpu {
        let cpuinfo = self.read("proc/cpuinfo").unwrap_or_default();
        // The first processor's block.
        let block = cpuinfo.split("\n\n").next().unwrap_or_default();
        let field = |key: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        let number = |key: &str| field(key).and_then(|v| v.parse::<u32>().ok());
        let vendor = field("vendor_id").map(|v| vendor_name(&v).to_owned());
        let microcode = field("microcode").and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        });
        let phys_bits = field("address sizes").and_then(|v| v.split_whitespace().next()?.parse().ok());
        let flags = field("flags")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        HostCpu {
            vendor,
            family: number("cpu family"),
            model: number("model"),
            stepping: number("stepping"),
            microcode: microcode.filter(|m| *m > 0),
            phys_bits,
            flags,
            topology: self.topology(),
        }
    }

    fn online_cpus(&self) -> Vec<u32> {
        self.read("sys/devices/system/cpu/online")
            .map(|l| parse_cpu_list(&l))
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
                (0..n).collect()
            })
    }

    fn placement(&self, cpu: u32) -> Option<CpuPlacement> {
        let base = format!("sys/devices/system/cpu/cpu{cpu}/topology");
        let id = |name: &str| {
            self.read_u64(&format!("{base}/{name}"))
                .and_then(|v| u32::try_from(v).ok())
        };
        let siblings = self.read(&format!("{base}/thread_siblings_list"))?;
        Some(CpuPlacement {
            socket_id: id("physical_package_id")?,
            die_id: id("die_id").unwrap_or(0),
            cluster_id: id("cluster_id").unwrap_or(0),
            core_id: id("core_id")?,
            siblings: siblings.trim().to_owned(),
        })
    }

    fn topology(&self) -> Topology {
        let placements: Vec<CpuPlacement> = self
            .online_cpus()
            .into_iter()
            .filter_map(|c| self.placement(c))
            .collect();
        if placements.is_empty() {
            return Topology {
                cores: self.online_cpus().len().max(1) as u32,
                ..Topology::default()
            };
        }
        let count = |f: &dyn Fn(&CpuPlacement) -> (u32, u32, u32)| {
            placements.iter().map(f).collect::<BTreeSet<_>>().len() as u32
        };
        let sockets = count(&|p| (p.socket_id, 0, 0)).max(1);
        let dies = (count(&|p| (p.socket_id, p.die_id, 0)) / sockets).max(1);
        let cores = (count(&|p| (p.socket_id, p.die_id, p.core_id)) / (sockets * dies)).max(1);
        let threads = (placements.len() as u32 / (sockets * dies * cores)).max(1);
        Topology {
            sockets,
            dies,
            clusters: 1,
            cores,
            threads,
        }
    }

    fn power(&self) -> PowerManagement {
        let states = self.read("sys/power/state").unwrap_or_default();
        let has = |s: &str| states.split_whitespace().any(|w| w == s);
        let disk_modes = self.read("sys/power/disk").unwrap_or_default();
        let disk = has("disk");
        PowerManagement {
            suspend_mem: has("mem"),
            suspend_disk: disk,
            suspend_hybrid: disk
                && disk_modes
                    .split_whitespace()
                    .any(|w| w.trim_matches(['[', ']']) == "suspend"),
        }
    }

    fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
        text.lines().find_map(|l| {
            let (_, rest) = l.split_once(&format!("{key}:"))?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    fn cells(&self, page_kib: u64, page_sizes: &[u64]) -> Vec<NumaCell> {
        let nodes: Vec<u32> = self
            .read_dir("sys/devices/system/node")
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.strip_prefix("node")?.parse().ok())
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        let online: BTreeSet<u32> = self.online_cpus().into_iter().collect();
        let cpu = |id: u32| CellCpu {
            id,
            placement: online.contains(&id).then(|| self.placement(id)).flatten(),
        };
        if nodes.is_empty() {
            let memory_kib = self
                .read("proc/meminfo")
                .and_then(|t| Self::meminfo_kib(&t, "MemTotal"))
                .unwrap_or(0);
            return vec![NumaCell {
                id: 0,
                memory_kib,
                pages: page_sizes
                    .iter()
                    .map(|s| {
                        (
                            *s,
                            if *s == page_kib {
                                memory_kib / page_kib.max(1)
                            } else {
                                0
                            },
                        )
                    })
                    .collect(),
                distances: Vec::new(),
                cpus: online.iter().map(|c| cpu(*c)).collect(),
            }];
        }
        nodes
            .iter()
            .map(|&node| {
                let base = format!("sys/devices/system/node/node{node}");
                let memory_kib = self
                    .read(&format!("{base}/meminfo"))
                    .and_then(|t| Self::meminfo_kib(&t, "MemTotal"))
                    .unwrap_or(0);
                let huge: Vec<(u64, u64)> = self
                    .huge_page_sizes(&format!("{base}/hugepages"))
                    .into_iter()
                    .map(|size| {
                        let n = self
                            .read_u64(&format!("{base}/hugepages/hugepages-{size}kB/nr_hugepages"))
                            .unwrap_or(0);
                        (size, n)
                    })
                    .collect();
                let huge_kib: u64 = huge.iter().map(|(s, n)| s * n).sum();
                let mut pages = vec![(page_kib, memory_kib.saturating_sub(huge_kib) / page_kib.max(1))];
                pages.extend(huge);
                let distances = self
                    .read(&format!("{base}/distance"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|d| d.parse::<u32>().ok())
                    .zip(nodes.iter().copied())
                    .map(|(value, id)| (id, value))
                    .collect();
                let cpus = self
                    .read(&format!("{base}/cpulist"))
                    .map(|l| parse_cpu_list(&l))
                    .unwrap_or_default()
                    .into_iter()
                    .map(cpu)
                    .collect();
                NumaCell {
                    id: node,
                    memory_kib,
                    pages,
                    distances,
                    cpus,
                }
            })
            .collect()
    }
}

/// libvirt's vendor name for a CPUID vendor string.
pub fn vendor_name(vendor_id: &str) -> &str {
    match vendor_id {
        "AuthenticAMD" => "AMD",
        "GenuineIntel" => "Intel",
        "HygonGenuine" => "Hygon",
        "CentaurHauls" | "  Shanghai  " => "Zhaoxin",
        other => other,
    }
}

/// The CPUs of a kernel CPU list (`0-3,8,10-11`).
pub fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.trim().parse::<u32>().ok()),
        }
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// Two NUMA nodes, two CPUs each (two cores with two threads per node's socket).
    fn two_node_host() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(
            root,
            "proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n\
             stepping\t: 7\nmicrocode\t: 0x5003604\naddress sizes\t: 46 bits physical, 48 bits virtual\n\
             flags\t\t: fpu vmx pae\n\nprocessor\t: 1\n",
        );
        write(root, "sys/devices/system/cpu/online", "0-3\n");
        for cpu in 0..4u32 {
            let base = format!("sys/devices/system/cpu/cpu{cpu}/topology");
            write(
                root,
                &format!("{base}/physical_package_id"),
                &format!("{}\n", cpu / 2),
            );
            write(root, &format!("{base}/die_id"), "0\n");
            write(root, &format!("{base}/cluster_id"), "0\n");
            write(root, &format!("{base}/core_id"), "0\n");
            let first = cpu / 2 * 2;
            write(
                root,
                &format!("{base}/thread_siblings_list"),
                &format!("{first}-{}\n", first + 1),
            );
        }
        for node in 0..2u32 {
            let base = format!("sys/devices/system/node/node{node}");
            write(
                root,
                &format!("{base}/cpulist"),
                &format!("{}-{}\n", node * 2, node * 2 + 1),
            );
            write(
                root,
                &format!("{base}/distance"),
                if node == 0 { "10 21\n" } else { "21 10\n" },
            );
            write(
                root,
                &format!("{base}/meminfo"),
                &format!("Node {node} MemTotal:       4194304 kB\n"),
            );
            write(
                root,
                &format!("{base}/hugepages/hugepages-2048kB/nr_hugepages"),
                "16\n",
            );
        }
        write(
            root,
            "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            "32\n",
        );
        write(root, "sys/power/state", "freeze mem disk\n");
        write(root, "sys/power/disk", "[platform] shutdown reboot suspend\n");
        write(
            root,
            "sys/class/dmi/id/product_uuid",
            "4C4C4544-0031-3010-8052-B4C04F4A4B32\n",
        );
        std::fs::create_dir_all(root.join("sys/kernel/iommu_groups/0")).expect("iommu group");
        dir
    }

    #[test]
    fn numa_cells_come_from_sysfs() {
        let dir = two_node_host();
        let host = HostInfo::read(dir.path(), "x86_64");
        assert_eq!(host.cells.len(), 2);
        let cell = &host.cells[1];
        assert_eq!(cell.id, 1);
        assert_eq!(cell.memory_kib, 4_194_304);
        assert_eq!(cell.distances, vec![(0, 21), (1, 10)]);
        assert_eq!(cell.cpus.iter().map(|c| c.id).collect::<Vec<_>>(), vec![2, 3]);
        let p = cell.cpus[0].placement.as_ref().expect("placement");
        assert_eq!((p.socket_id, p.core_id, p.siblings.as_str()), (1, 0, "2-3"));
        let page = base_page_kib();
        assert_eq!(cell.pages[0], (page, (4_194_304 - 16 * 2048) / page));
        assert_eq!(cell.pages[1], (2048, 16));
    }

    #[test]
    fn cpu_identity_and_topology_come_from_proc_and_sysfs() {
        let dir = two_node_host();
        let host = HostInfo::read(dir.path(), "x86_64");
        assert_eq!(host.cpu.vendor.as_deref(), Some("Intel"));
        assert_eq!(
            (host.cpu.family, host.cpu.model, host.cpu.stepping),
            (Some(6), Some(85), Some(7))
        );
        assert_eq!(host.cpu.microcode, Some(0x5003604));
        assert_eq!(host.cpu.phys_bits, Some(46));
        assert!(host.cpu.flags.contains("vmx"));
        assert_eq!(
            host.cpu.topology,
            Topology {
                sockets: 2,
                dies: 1,
                clusters: 1,
                cores: 1,
                threads: 2
            }
        );
    }

    #[test]
    fn power_iommu_uuid_and_pages_are_read() {
        let dir = two_node_host();
        let host = HostInfo::read(dir.path(), "x86_64");
        assert_eq!(
            host.power,
            PowerManagement {
                suspend_mem: true,
                suspend_disk: true,
                suspend_hybrid: true
            }
        );
        assert!(host.iommu);
        assert_eq!(host.uuid, "4c4c4544-0031-3010-8052-b4c04f4a4b32");
        assert_eq!(host.page_sizes_kib, vec![base_page_kib(), 2048]);
    }

    #[test]
    fn host_without_numa_nodes_gets_one_cell_with_every_cpu() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "proc/meminfo", "MemTotal:       8000000 kB\n");
        write(dir.path(), "sys/devices/system/cpu/online", "0-2\n");
        write(
            dir.path(),
            "sys/class/dmi/id/product_uuid",
            "00000000-0000-0000-0000-000000000000\n",
        );
        let host = HostInfo::read(dir.path(), "x86_64");
        assert_eq!(host.cells.len(), 1);
        assert_eq!(host.cells[0].memory_kib, 8_000_000);
        assert_eq!(host.cells[0].cpus.len(), 3);
        assert!(host.cells[0].cpus.iter().all(|c| c.placement.is_none()));
        assert_ne!(
            host.uuid, "00000000-0000-0000-0000-000000000000",
            "a repeated digit is no identity"
        );
        assert!(!host.iommu);
        assert_eq!(host.power, PowerManagement::default());
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
    }

    #[test]
    fn this_host_reads_plausibly() {
        let host = HostInfo::read(Path::new("/"), "x86_64");
        assert!(!host.cells.is_empty());
        assert!(host.cells.iter().map(|c| c.cpus.len()).sum::<usize>() >= 1);
        assert!(rvirt_conf::xml::canonical_uuid(&host.uuid).is_some());
    }
}
