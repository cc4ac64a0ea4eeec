//! Domain statistics (`GetDomainStats`): state, CPU time, balloon, vCPUs, block and interface
//! counters, gathered from QEMU (QMP) and from the kernel (`/proc`) without taking a job.

use rvirt_conf::domain::Device;
use rvirt_proto::v1::*;

use super::{Domains, Vm, identity, process};

fn wanted(mask: u32, kind: DomainStatsType) -> bool {
    mask == 0 || mask & (kind as u32) != 0
}

impl Domains {
    /// One statistics record; groups that need QEMU are empty for an inactive domain.
    pub async fn stats(&self, vm: &Vm, mask: u32) -> DomainStatsRecord {
        let (who, state, reason, def) = {
            let inner = vm.lock();
            let def = inner
                .run
                .as_ref()
                .map(|r| r.def.clone())
                .or_else(|| inner.config.as_deref().cloned());
            (identity(&vm.uuid, &inner), inner.state, inner.reason, def)
        };
        let mut record = DomainStatsRecord {
            domain: Some(who),
            ..DomainStatsRecord::default()
        };
        if wanted(mask, DomainStatsType::State) {
            record.state = Some(DomainStatsState {
                state: state as i32,
                reason: Some(DomainStateReason { reason: Some(reason) }),
            });
        }
        let live = self.live(vm);
        if wanted(mask, DomainStatsType::CpuTotal) {
            let times = live.as_ref().and_then(|(_, _, pid)| process::cpu_time_ns(*pid));
            record.cpu = Some(DomainStatsCpu {
                time_ns: times.map(|(u, s)| u + s).unwrap_or(0),
                user_ns: times.map(|(u, _)| u),
                system_ns: times.map(|(_, s)| s),
            });
        }
        if wanted(mask, DomainStatsType::Balloon) {
            let max = def.as_ref().map(|d| d.memory.total_kib).unwrap_or(0);
            let mut current = match (&live, &def) {
                (Some((_, live_def, _)), _) => live_def.memory.current_kib,
                (None, Some(d)) => d.memory.total_kib,
                (None, None) => 0,
            };
            let has_balloon = def.as_ref().is_some_and(|d| {
                d.devices.list.iter().any(|dev| {
                    matches!(dev, Device::Memballoon(b) if b.model != rvirt_conf::domain::MemballoonModel::None)
                })
            });
            if let (Some((qmp, _, _)), true) = (&live, has_balloon)
                && let Ok(info) = qmp.query_balloon().await
            {
                current = info.actual / 1024;
            }
            let rss = live.as_ref().and_then(|(_, _, pid)| process::rss_kib(*pid));
            record.balloon = Some(DomainStatsBalloon {
                current_kib: current,
                maximum_kib: max,
                rss_kib: rss,
                ..DomainStatsBalloon::default()
            });
        }
        if wanted(mask, DomainStatsType::Vcpu) {
            let (current, maximum) = def
                .as_ref()
                .map(|d| (d.vcpu.current.unwrap_or(d.vcpu.count), d.vcpu.count))
                .unwrap_or((0, 0));
            let mut vcpus = Vec::new();
            if let Some((qmp, _, pid)) = &live
                && let Ok(cpus) = qmp.query_cpus_fast().await
            {
                {
                    for cpu in cpus {
                        let time = process::cpu_time_ns_of_thread(*pid, cpu.thread_id)
                            .map(|(u, s)| u + s)
                            .unwrap_or(0);
                        vcpus.push(DomainStatsVcpuEntry {
                            id: u32::try_from(cpu.cpu_index).unwrap_or(0),
                            state: DomainVcpuState::Running as i32,
                            time_ns: time,
                            ..DomainStatsVcpuEntry::default()
                        });
                    }
                }
            }
            record.vcpu = Some(DomainStatsVcpu {
                current,
                maximum,
                vcpus,
            });
        }
        if let (Some((qmp, live_def, _)), true) = (&live, wanted(mask, DomainStatsType::Block))
            && let Ok(stats) = qmp.query_blockstats().await
        {
            {
                for disk in live_def.devices.list.iter().filter_map(|d| match d {
                    Device::Disk(disk) => Some(disk),
                    _ => None,
                }) {
                    let alias = disk.info.alias.clone().unwrap_or_default();
                    let Some(entry) = stats.iter().find(|s| {
                        s.qdev
                            .as_deref()
                            .is_some_and(|q| q == alias || q.ends_with(&format!("/{alias}/virtio-backend")))
                    }) else {
                        continue;
                    };
                    let path = match &disk.source {
                        Some(rvirt_conf::domain::DiskSource::File(p))
                        | Some(rvirt_conf::domain::DiskSource::Block(p)) => p.clone(),
                        _ => String::new(),
                    };
                    let s = &entry.stats;
                    record.blocks.push(DomainStatsBlock {
                        name: disk.target.clone(),
                        path,
                        rd_reqs: s.rd_operations,
                        rd_bytes: s.rd_bytes,
                        rd_times_ns: s.rd_total_time_ns,
                        wr_reqs: s.wr_operations,
                        wr_bytes: s.wr_bytes,
                        wr_times_ns: s.wr_total_time_ns,
                        fl_reqs: s.flush_operations,
                        fl_times_ns: s.flush_total_time_ns,
                        ..DomainStatsBlock::default()
                    });
                }
            }
        }
        if let (Some((_, live_def, _)), true) = (&live, wanted(mask, DomainStatsType::Interface)) {
            let counters = process::net_dev_counters();
            for iface in live_def.devices.list.iter().filter_map(|d| match d {
                Device::Interface(i) => Some(i),
                _ => None,
            }) {
                let Some(dev) = iface.target_dev.as_ref() else {
                    continue;
                };
                // The host side of a tap sees the guest's transmissions as received: swap.
                let c = counters.get(dev).copied().unwrap_or_default();
                record.interfaces.push(DomainStatsInterface {
                    name: dev.clone(),
                    rx_bytes: c.tx_bytes,
                    rx_packets: c.tx_packets,
                    rx_errors: c.tx_errors,
                    rx_drops: c.tx_drops,
                    tx_bytes: c.rx_bytes,
                    tx_packets: c.rx_packets,
                    tx_errors: c.rx_errors,
                    tx_drops: c.rx_drops,
                });
            }
        }
        record
    }
}
