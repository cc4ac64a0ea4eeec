//! Changes to a domain that are not its lifecycle: its name (`RenameDomain`) and its title,
//! description and `<metadata>` elements (`SetDomainMetadata`, `GetDomainMetadata`), with
//! libvirt's rules and events.

use rvirt_conf::domain::{DiskSource, fragment, metadata};

use super::*;

/// Which definitions a call affects (libvirt's `VIR_DOMAIN_AFFECT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Affect {
    live: bool,
    config: bool,
}

const AFFECT_LIVE: u32 = DomainAffect::Live as u32;
const AFFECT_CONFIG: u32 = DomainAffect::Config as u32;

fn invalid_arg(message: impl Into<String>) -> Status {
    err(ErrorCode::InvalidArg, message)
}

/// Resolves `flags` for a domain that is `running` and `persistent`: CURRENT means the live
/// domain when it runs, else its configuration.
fn affect(flags: u32, name: &str, running: bool, persistent: bool) -> Result<Affect, Status> {
    if flags & !(AFFECT_LIVE | AFFECT_CONFIG) != 0 {
        return Err(err(
            ErrorCode::InvalidArg,
            format!(
                "unsupported flags (0x{:x}): use LIVE and/or CONFIG",
                flags & !(AFFECT_LIVE | AFFECT_CONFIG)
            ),
        ));
    }
    let mut affect = Affect {
        live: flags & AFFECT_LIVE != 0,
        config: flags & AFFECT_CONFIG != 0,
    };
    if !affect.live && !affect.config {
        affect.live = running;
        affect.config = !running;
    }
    if affect.live && !running {
        return Err(err(
            ErrorCode::OperationInvalid,
            format!("Requested operation is not valid: domain '{name}' is not running"),
        ));
    }
    if affect.config && !persistent {
        return Err(err(
            ErrorCode::OperationInvalid,
            format!(
                "Requested operation is not valid: transient domain '{name}' has no persistent configuration"
            ),
        ));
    }
    Ok(affect)
}

fn metadata_type(kind: i32) -> Result<DomainMetadataType, Status> {
    DomainMetadataType::try_from(kind).map_err(|_| invalid_arg(format!("unknown metadata type {kind}")))
}

fn no_uri() -> Status {
    invalid_arg("a metadata element is named by its namespace URI: give uri")
}

/// A copy of `def` (when there is one to change) with `edit` applied, so that every definition
/// a call changes is checked before any is written.
fn edited(
    def: Option<&DomainDef>,
    edit: impl FnOnce(&mut DomainDef) -> Result<(), Status>,
) -> Result<Option<DomainDef>, Status> {
    def.map(|def| {
        let mut def = def.clone();
        edit(&mut def).map(|()| def)
    })
    .transpose()
}

/// Applies one metadata change to a definition.
fn apply(
    def: &mut DomainDef,
    kind: DomainMetadataType,
    value: Option<&str>,
    key: &str,
    uri: &str,
) -> Result<(), Status> {
    let value = value.filter(|v| kind == DomainMetadataType::Element || !v.is_empty());
    match kind {
        DomainMetadataType::Title => {
            if value.is_some_and(|v| v.contains('\n')) {
                return Err(invalid_arg("the title cannot contain a new line"));
            }
            def.title = value.map(str::to_owned);
        }
        DomainMetadataType::Description => def.description = value.map(str::to_owned),
        DomainMetadataType::Element => {
            def.metadata = metadata::set_metadata_element(def.metadata.as_deref(), uri, key, value)
                .map_err(|e| invalid_arg(format!("Cannot set the metadata element: {}", e.message)))?;
        }
    }
    Ok(())
}

impl Domains {
    /// Writes `def` as `vm`'s definition and makes it the one in force.
    async fn store_config(&self, vm: &Vm, def: DomainDef) -> Result<(), Status> {
        self.save_config(&def).await?;
        vm.lock().config = Some(Arc::new(def));
        Ok(())
    }

    /// Renames an inactive persistent domain, as libvirt's `virDomainRename`: the new
    /// definition is written, the autostart link follows it, the old file goes, and the
    /// domain is reported undefined (renamed) under its old name and defined (renamed) under
    /// the new one.
    pub async fn rename(&self, vm: &Arc<Vm>, new_name: &str) -> Result<(), Status> {
        let _job = vm.job.lock().await;
        let (old_name, config, autostart) = {
            let inner = vm.lock();
            if inner.run.is_some() {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: cannot rename active domain '{}': stop it first",
                        inner.name
                    ),
                ));
            }
            let Some(config) = inner.config.clone() else {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: cannot rename transient domain '{}'",
                        inner.name
                    ),
                ));
            };
            (inner.name.clone(), config, inner.autostart)
        };
        if new_name.is_empty() || new_name.contains('/') || new_name.contains('\n') {
            return Err(invalid_arg(format!(
                "'{new_name}' is not a valid domain name: it must be non-empty, without '/' or a new line"
            )));
        }
        {
            let mut registry = self.registry_mut();
            if registry.by_name.contains_key(new_name) {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!("Requested operation is not valid: domain with name '{new_name}' already exists"),
                ));
            }
            // The new name is taken now; the files are written without the registry lock.
            registry.by_name.insert(new_name.to_owned(), Arc::clone(vm));
        }
        let release_new_name = || {
            let mut registry = self.registry_mut();
            if registry.by_name.get(new_name).is_some_and(|v| Arc::ptr_eq(v, vm)) {
                registry.by_name.remove(new_name);
            }
        };
        let mut def = (*config).clone();
        def.name = new_name.to_owned();
        if let Err(e) = self.save_config(&def).await {
            release_new_name();
            return Err(e);
        }
        let old_link = self.paths.autostart_link(&old_name);
        let new_file = self.paths.config_file(new_name);
        let new_link = self.paths.autostart_link(new_name);
        let old_file = config_file_name(&old_name);
        let new_file_name = config_file_name(new_name);
        let old_path = self.paths.config_file(&old_name);
        let moved = self
            .with_files(move |files| {
                let moved = (|| {
                    if autostart {
                        let _ = std::fs::remove_file(&new_link);
                        std::os::unix::fs::symlink(&new_file, &new_link)
                            .map_err(|e| io_error("create the autostart link", &new_link, &e))?;
                    }
                    files.remove(&old_file).map_err(|e| io_error("remove", &old_path, &e))
                })();
                if moved.is_err() {
                    // Back to the old name: the new files go, the old definition stays in force.
                    let _ = std::fs::remove_file(&new_link);
                    let _ = files.remove(&new_file_name);
                } else if autostart && let Err(e) = rvirt_daemon::atomic::remove_durable(&old_link) {
                    tracing::warn!(link = %old_link.display(), error = %e, "cannot remove the old autostart link");
                }
                moved
            })
            .await
            .and_then(|moved| moved);
        if let Err(e) = moved {
            release_new_name();
            return Err(e);
        }
        let mut registry = self.registry_mut();
        registry.by_name.remove(&old_name);
        registry.uuid_to_name.insert(vm.uuid.clone(), new_name.to_owned());
        let (before, after) = {
            let mut inner = vm.lock();
            let before = identity(&vm.uuid, &inner);
            inner.name = new_name.to_owned();
            inner.config = Some(Arc::new(def));
            (before, identity(&vm.uuid, &inner))
        };
        drop(registry);
        self.emit(
            before,
            lifecycle(
                DomainEventType::Undefined,
                Detail::Undefined(DomainEventUndefinedDetail::Renamed as i32),
            ),
        );
        self.emit(
            after,
            lifecycle(
                DomainEventType::Defined,
                Detail::Defined(DomainEventDefinedDetail::Renamed as i32),
            ),
        );
        Ok(())
    }

    /// Sets or (with `value` absent) removes the title, the description or the `<metadata>`
    /// element of namespace `uri` (written with prefix `key`), in the live domain and/or its
    /// configuration, and reports a metadata-change event.
    pub async fn set_metadata(
        &self,
        vm: &Arc<Vm>,
        kind: i32,
        value: Option<&str>,
        key: &str,
        uri: &str,
        flags: u32,
    ) -> Result<(), Status> {
        let kind = metadata_type(kind)?;
        if kind == DomainMetadataType::Element && uri.is_empty() {
            return Err(no_uri());
        }
        let _job = vm.job.lock().await;
        let (name, running, config) = snapshot(vm);
        let affect = affect(flags, &name, running, config.is_some())?;
        // Both changes are checked before either is made.
        let new_config = edited(config.as_deref().filter(|_| affect.config), |def| {
            apply(def, kind, value, key, uri)
        })?;
        let new_live = if affect.live {
            let inner = vm.lock();
            let mut def = inner
                .run
                .as_ref()
                .map(|r| r.def.clone())
                .ok_or_else(|| not_running(&name))?;
            drop(inner);
            apply(&mut def, kind, value, key, uri)?;
            Some(def)
        } else {
            None
        };
        if let Some(def) = new_config {
            self.store_config(vm, def).await?;
        }
        if let Some(def) = new_live {
            if let Some(run) = vm.lock().run.as_mut() {
                run.def = def;
            }
            self.save_status(vm).await;
        }
        self.emit(
            vm.identity(),
            domain_event::Event::MetadataChange(DomainMetadataChangeEvent {
                r#type: kind as i32,
                nsuri: if kind == DomainMetadataType::Element {
                    uri.to_owned()
                } else {
                    String::new()
                },
            }),
        );
        Ok(())
    }

    /// The title, the description or the `<metadata>` element of namespace `uri`, from the live
    /// domain or its configuration; `NO_DOMAIN_METADATA` when it has none.
    pub fn metadata(&self, vm: &Vm, kind: i32, uri: &str, flags: u32) -> Result<String, Status> {
        let kind = metadata_type(kind)?;
        if flags & AFFECT_LIVE != 0 && flags & AFFECT_CONFIG != 0 {
            return Err(invalid_arg(
                "LIVE and CONFIG are mutually exclusive here: ask for one",
            ));
        }
        let inner = vm.lock();
        let affect = affect(flags, &inner.name, inner.run.is_some(), inner.config.is_some())?;
        let def = if affect.live {
            inner.run.as_ref().map(|r| &r.def)
        } else {
            inner.config.as_deref()
        }
        .ok_or_else(|| not_running(&inner.name))?;
        let found = match kind {
            DomainMetadataType::Title => def.title.clone(),
            DomainMetadataType::Description => def.description.clone(),
            DomainMetadataType::Element => {
                if uri.is_empty() {
                    return Err(no_uri());
                }
                metadata::metadata_element(def.metadata.as_deref(), uri)
                    .map_err(|e| err(ErrorCode::InternalError, e.to_string()))?
            }
        };
        found.ok_or_else(|| {
            err(
                ErrorCode::NoDomainMetadata,
                "metadata not found: Requested metadata element is not present",
            )
        })
    }
}

const MEM_MAXIMUM: u32 = DomainMemFlag::Maximum as u32;
const VCPU_MAXIMUM: u32 = DomainVcpuFlag::Maximum as u32;
const VCPU_GUEST: u32 = DomainVcpuFlag::Guest as u32;
const VCPU_HOTPLUGGABLE: u32 = DomainVcpuFlag::Hotpluggable as u32;

/// `<memory>` (with `maximum`) or `<currentMemory>` of a definition set to `kib`, with
/// libvirt's rules.
fn set_memory_of(def: &mut DomainDef, kib: u64, maximum: bool) -> Result<(), Status> {
    if maximum {
        def.memory.total_kib = kib;
        def.memory.current_kib = def.memory.current_kib.min(kib);
    } else {
        if kib > def.memory.total_kib {
            return Err(invalid_arg(format!(
                "cannot set memory higher than max memory ({kib} KiB > {} KiB): raise it first with the MAXIMUM flag",
                def.memory.total_kib
            )));
        }
        def.memory.current_kib = kib;
    }
    Ok(())
}

/// The vCPU count of a definition set to `count` (`maximum`: the number it has, else the
/// number online at boot), with libvirt's rules.
fn set_vcpus_of(def: &mut DomainDef, count: u32, maximum: bool) -> Result<(), Status> {
    if maximum {
        def.vcpu.count = count;
        if def.vcpu.current.is_some_and(|c| c >= count) {
            def.vcpu.current = None;
        }
    } else {
        if count > def.vcpu.count {
            return Err(invalid_arg(format!(
                "requested vcpus is greater than max allowable vcpus for the persistent domain: {count} > {}",
                def.vcpu.count
            )));
        }
        def.vcpu.current = (count < def.vcpu.count).then_some(count);
    }
    Ok(())
}

impl Domains {
    /// `virDomainSetMemoryFlags`: the definition's current or (`MAXIMUM`) maximum memory, and a
    /// running domain's balloon target through QMP `balloon` (the balloon's own event then
    /// updates the live definition).
    pub async fn set_memory(&self, vm: &Arc<Vm>, kib: u64, flags: u32) -> Result<(), Status> {
        let maximum = flags & MEM_MAXIMUM != 0;
        if kib == 0 {
            return Err(invalid_arg("the memory size must be more than 0 KiB"));
        }
        let _job = vm.job.lock().await;
        let (name, running, config) = snapshot(vm);
        let affect = affect(flags & !MEM_MAXIMUM, &name, running, config.is_some())?;
        if maximum && affect.live {
            return Err(err(
                ErrorCode::OperationInvalid,
                format!(
                    "Requested operation is not valid: cannot resize the maximum memory of active domain '{name}': use CONFIG"
                ),
            ));
        }
        let new_config = edited(config.as_deref().filter(|_| affect.config), |def| {
            set_memory_of(def, kib, maximum)
        })?;
        if affect.live {
            let (qmp, total, balloon) = {
                let inner = vm.lock();
                let run = inner.run.as_ref().ok_or_else(|| not_running(&name))?;
                let balloon = run
                    .def
                    .devices
                    .memballoon()
                    .is_some_and(|b| b.model != rvirt_conf::domain::MemballoonModel::None);
                (run.qmp.clone(), run.def.memory.total_kib, balloon)
            };
            if !balloon {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!(
                        "Requested operation is not valid: domain '{name}' has no memory balloon device: the memory of a running domain changes only through one"
                    ),
                ));
            }
            if kib > total {
                return Err(invalid_arg(format!(
                    "cannot set memory higher than max memory ({kib} KiB > {total} KiB)"
                )));
            }
            qmp.balloon(kib * 1024).await.map_err(|e| {
                err(
                    ErrorCode::OperationFailed,
                    format!("Unable to change memory of domain '{name}': {e}"),
                )
            })?;
        }
        if let Some(def) = new_config {
            self.store_config(vm, def).await?;
        }
        Ok(())
    }

    /// `virDomainSetVcpusFlags` for the definition: how many vCPUs are online at boot, or
    /// (`MAXIMUM`) how many it has. Changing a running domain's vCPUs (hotplug) and the guest
    /// agent's count are not supported.
    pub async fn set_vcpus(&self, vm: &Arc<Vm>, count: u32, flags: u32) -> Result<(), Status> {
        if flags & VCPU_GUEST != 0 {
            return Err(err(
                ErrorCode::OperationUnsupported,
                "setting the vCPUs the guest uses needs the guest agent, which is not supported",
            ));
        }
        if count == 0 {
            return Err(invalid_arg("Argument out of range: can't set 0 processors"));
        }
        let maximum = flags & VCPU_MAXIMUM != 0;
        let _job = vm.job.lock().await;
        let (_, config) = config_only(vm, flags & !(VCPU_MAXIMUM | VCPU_HOTPLUGGABLE), |name| {
            no_hotplug("changing the vCPUs of", name)
        })?;
        let mut def = (*config).clone();
        set_vcpus_of(&mut def, count, maximum)?;
        self.store_config(vm, def).await?;
        Ok(())
    }
}

/// The device elements `AttachDomainDevice` and `DetachDomainDevice` take.
const DEVICE_ELEMENTS: &[&str] = &[
    "disk",
    "controller",
    "interface",
    "serial",
    "console",
    "graphics",
    "video",
    "input",
    "rng",
    "watchdog",
    "memballoon",
];

/// Checks that `xml` is one device element of a supported kind.
fn device_fragment(xml: &str) -> Result<fragment::Outline, Status> {
    let outline = fragment::outline(xml)
        .map_err(|e| err(ErrorCode::XmlError, format!("Invalid device XML: {}", e.message)))?;
    if !DEVICE_ELEMENTS.contains(&outline.name.as_str()) {
        return Err(err(
            ErrorCode::ConfigUnsupported,
            format!(
                "unsupported configuration: <{}> is not a device rvirt attaches (supported: {})",
                outline.name,
                DEVICE_ELEMENTS.join(", ")
            ),
        ));
    }
    Ok(outline)
}

fn no_hotplug(what: &str, name: &str) -> Status {
    err(
        ErrorCode::OperationUnsupported,
        format!(
            "Operation not supported: {what} running domain '{name}' (hotplug) is not supported yet: change its configuration (CONFIG) and restart it"
        ),
    )
}

/// The name, whether it runs, and the persistent definition of `vm`.
fn snapshot(vm: &Vm) -> (String, bool, Option<Arc<DomainDef>>) {
    let inner = vm.lock();
    (inner.name.clone(), inner.run.is_some(), inner.config.clone())
}

/// For a change that only the definition takes: the name and definition of `vm`, or
/// `refusal(name)` when `flags` (or CURRENT on a running domain) reach the running domain.
fn config_only(
    vm: &Vm,
    flags: u32,
    refusal: impl FnOnce(&str) -> Status,
) -> Result<(String, Arc<DomainDef>), Status> {
    let (name, running, config) = snapshot(vm);
    if affect(flags, &name, running, config.is_some())?.live {
        return Err(refusal(&name));
    }
    let config = config.ok_or_else(|| not_running(&name))?;
    Ok((name, config))
}

fn internal(e: impl std::fmt::Display) -> Status {
    err(ErrorCode::InternalError, e.to_string())
}

impl Domains {
    /// `def` with the device element `fragment` placed at the end of `<devices>`, parsed as a
    /// whole: the device gets the defaults, address and alias defining it would give, and an
    /// invalid device is refused naming its path.
    fn with_fragment(&self, def: &DomainDef, fragment: &str) -> Result<DomainDef, Status> {
        let xml = def.format(FormatFlags::default()).map_err(internal)?;
        let fragment = fragment.trim();
        // `<devices>` is the last element that can hold this text: search from the end (an
        // application's `<metadata>` element, earlier, may use the same words).
        let combined = if let Some(at) = xml.rfind("</devices>") {
            format!("{}  {fragment}\n  {}", &xml[..at], &xml[at..])
        } else if let Some(at) = xml.rfind("<devices/>") {
            let rest = &xml[at + "<devices/>".len()..];
            format!("{}<devices>\n    {fragment}\n  </devices>{rest}", &xml[..at])
        } else {
            let at = xml
                .rfind("</domain>")
                .ok_or_else(|| internal("the formatted definition has no </domain>"))?;
            format!(
                "{}  <devices>\n    {fragment}\n  </devices>\n{}",
                &xml[..at],
                &xml[at..]
            )
        };
        DomainDef::parse_with(&combined, ParseFlags::default(), &self.defaults()).map_err(|e| xml_status(&e))
    }

    /// The device element `fragment` (of element `name`) parsed alone in an otherwise empty
    /// copy of `def`, in the domain's context (machine, architecture).
    fn device_alone(&self, def: &DomainDef, fragment: &str, name: &str) -> Result<Device, Status> {
        let mut bare = def.clone();
        bare.devices.list.clear();
        self.with_fragment(&bare, fragment)?
            .devices
            .list
            .into_iter()
            .rev()
            .find(|d| d.element() == name)
            .ok_or_else(|| internal("the device is missing from the parsed definition"))
    }

    /// `virDomainAttachDeviceFlags` for the definition of an inactive or running domain (the
    /// device is there at its next start). A disk whose target or an interface whose MAC is
    /// already used is refused; attaching to the running domain is not supported yet.
    pub async fn attach_device(&self, vm: &Arc<Vm>, xml: &str, flags: u32) -> Result<(), Status> {
        let outline = device_fragment(xml)?;
        let _job = vm.job.lock().await;
        let (_, config) = config_only(vm, flags, |name| no_hotplug("attaching a device to", name))?;
        // The device alone first, so that a clash is reported as libvirt reports it.
        let wanted = self.device_alone(&config, xml, &outline.name)?;
        match &wanted {
            Device::Disk(disk)
                if config
                    .devices
                    .list
                    .iter()
                    .any(|d| matches!(d, Device::Disk(o) if o.target == disk.target)) =>
            {
                return Err(err(
                    ErrorCode::OperationFailed,
                    format!("Operation failed: target {} already exists", disk.target),
                ));
            }
            Device::Interface(net)
                if config
                    .devices
                    .list
                    .iter()
                    .any(|d| matches!(d, Device::Interface(o) if o.mac == net.mac)) =>
            {
                return Err(invalid_arg(format!(
                    "network device with mac {} already exists",
                    net.mac
                )));
            }
            _ => {}
        }
        let new = self.with_fragment(&config, xml)?;
        self.store_config(vm, new).await?;
        Ok(())
    }

    /// `virDomainDetachDeviceFlags` (and `virDomainDetachDeviceAlias`) for the definition: a
    /// disk is found by its target, an interface by its MAC (or as the only interface), any
    /// device by its user alias. Detaching from the running domain is not supported yet.
    pub async fn detach_device(
        &self,
        vm: &Arc<Vm>,
        xml: Option<&str>,
        alias: Option<&str>,
        flags: u32,
    ) -> Result<(), Status> {
        let outline = xml.map(device_fragment).transpose()?;
        let _job = vm.job.lock().await;
        let (_, config) = config_only(vm, flags, |name| no_hotplug("detaching a device from", name))?;
        let devices = &config.devices.list;
        let index = match (xml, outline, alias) {
            (Some(xml), Some(outline), _) => match self.device_alone(&config, xml, &outline.name)? {
                Device::Disk(disk) => devices
                    .iter()
                    .position(|d| matches!(d, Device::Disk(o) if o.target == disk.target))
                    .ok_or_else(|| {
                        err(
                            ErrorCode::DeviceMissing,
                            format!("no target device {}", disk.target),
                        )
                    })?,
                Device::Interface(net) => {
                    let nets: Vec<usize> = devices
                        .iter()
                        .enumerate()
                        .filter(|(_, d)| matches!(d, Device::Interface(_)))
                        .map(|(i, _)| i)
                        .collect();
                    if outline.children.iter().any(|c| c == "mac") {
                        nets.into_iter()
                            .find(|&i| matches!(&devices[i], Device::Interface(o) if o.mac == net.mac))
                            .ok_or_else(|| {
                                err(
                                    ErrorCode::DeviceMissing,
                                    format!("no device matching MAC address {} found", net.mac),
                                )
                            })?
                    } else {
                        match nets.as_slice() {
                            [one] => *one,
                            [] => return Err(err(ErrorCode::DeviceMissing, "no interface found")),
                            _ => {
                                return Err(err(
                                    ErrorCode::OperationFailed,
                                    "multiple interfaces match: name the one to detach by its <mac address>",
                                ));
                            }
                        }
                    }
                }
                other => {
                    return Err(err(
                        ErrorCode::OperationUnsupported,
                        format!(
                            "Operation not supported: detaching <{}> by its XML is supported for disks and interfaces; detach it by its alias",
                            other.element()
                        ),
                    ));
                }
            },
            (_, _, Some(alias)) if !alias.is_empty() => devices
                .iter()
                .position(|d| d.info().and_then(|i| i.alias.as_deref()) == Some(alias))
                .ok_or_else(|| {
                    err(
                        ErrorCode::DeviceMissing,
                        format!("no device found with alias {alias}"),
                    )
                })?,
            _ => return Err(invalid_arg("name the device to detach by its XML or its alias")),
        };
        let mut def = (*config).clone();
        def.devices.list.remove(index);
        self.store_config(vm, def).await?;
        Ok(())
    }
}

const DEVICE_FORCE: u32 = DomainDeviceModifyFlag::Force as u32;

fn media_only() -> Status {
    err(
        ErrorCode::OperationUnsupported,
        "Operation not supported: UpdateDomainDevice changes the medium of a CD-ROM (<disk device='cdrom'> with its target and new source, or none to eject); other devices cannot be updated",
    )
}

/// Puts `new`'s medium (source and format) into the CD-ROM of `def` with the same target;
/// returns that CD-ROM's alias.
fn change_medium(def: &mut DomainDef, new: &rvirt_conf::domain::Disk) -> Result<Option<String>, Status> {
    let disk = def
        .devices
        .list
        .iter_mut()
        .find_map(|d| match d {
            Device::Disk(disk) if disk.target == new.target => Some(disk),
            _ => None,
        })
        .ok_or_else(|| {
            err(
                ErrorCode::DeviceMissing,
                format!("no target device {}", new.target),
            )
        })?;
    if disk.device != rvirt_conf::domain::DiskDevice::Cdrom {
        return Err(media_only());
    }
    disk.source = new.source.clone();
    disk.driver.format = new.driver.format;
    Ok(disk.info.alias.clone())
}

impl Domains {
    /// `virDomainUpdateDeviceFlags` for CD-ROM media (virsh `change-media`): the definition's
    /// source changes, and a running domain's drive gets the new medium through QMP
    /// `blockdev-change-medium`, or is ejected (`eject`, with `FORCE` even if the guest locked
    /// the tray).
    pub async fn update_device(&self, vm: &Arc<Vm>, xml: &str, flags: u32) -> Result<(), Status> {
        let outline = device_fragment(xml)?;
        if outline.name != "disk" {
            return Err(media_only());
        }
        let _job = vm.job.lock().await;
        let (name, running, config) = snapshot(vm);
        let affect = affect(flags & !DEVICE_FORCE, &name, running, config.is_some())?;
        let live = if affect.live {
            let inner = vm.lock();
            let run = inner.run.as_ref().ok_or_else(|| not_running(&name))?;
            Some((run.def.clone(), run.qmp.clone()))
        } else {
            None
        };
        let context = match (&live, &config) {
            (Some((def, _)), _) => def.clone(),
            (None, Some(config)) => (**config).clone(),
            (None, None) => return Err(not_running(&name)),
        };
        let Device::Disk(new) = self.device_alone(&context, xml, "disk")? else {
            return Err(internal("the parsed device is not a disk"));
        };
        if new.device != rvirt_conf::domain::DiskDevice::Cdrom {
            return Err(media_only());
        }
        let path = match &new.source {
            None => None,
            Some(DiskSource::File(path) | DiskSource::Block(path)) => Some(path.clone()),
            Some(DiskSource::Volume { .. }) => {
                return Err(err(
                    ErrorCode::OperationUnsupported,
                    "Operation not supported: a storage volume as a CD-ROM medium: give its path",
                ));
            }
        };
        // Both definitions are checked before either changes.
        let new_config = edited(config.as_deref().filter(|_| affect.config), |def| {
            change_medium(def, &new).map(|_| ())
        })?;
        if let Some((mut def, qmp)) = live {
            let alias = change_medium(&mut def, &new)?
                .ok_or_else(|| internal(format!("the CD-ROM {} has no alias", new.target)))?;
            let result = match &path {
                Some(path) => {
                    let format = new
                        .driver
                        .format
                        .map_or("raw", rvirt_conf::domain::XmlEnum::as_str);
                    qmp.execute_raw(
                        "blockdev-change-medium",
                        serde_json::json!({
                            "id": alias,
                            "filename": path,
                            "format": format,
                            "force": flags & DEVICE_FORCE != 0,
                        }),
                    )
                    .await
                }
                None => {
                    qmp.execute_raw(
                        "eject",
                        serde_json::json!({ "id": alias, "force": flags & DEVICE_FORCE != 0 }),
                    )
                    .await
                }
            };
            result.map_err(|e| {
                err(
                    ErrorCode::OperationFailed,
                    format!(
                        "Operation failed: cannot change the medium of {} in domain '{name}': {e}",
                        new.target
                    ),
                )
            })?;
            if let Some(run) = vm.lock().run.as_mut() {
                run.def = def;
            }
            self.save_status(vm).await;
        }
        if let Some(def) = new_config {
            self.store_config(vm, def).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> DomainDef {
        DomainDef::parse_with(
            "<domain type='qemu'><name>t</name><memory unit='MiB'>512</memory><vcpu>4</vcpu>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os></domain>",
            ParseFlags::default(),
            &QemuDefaults::default(),
        )
        .expect("definition")
    }

    #[test]
    fn memory_follows_libvirts_rules() {
        let mut d = def();
        set_memory_of(&mut d, 256 * 1024, false).expect("lower current");
        assert_eq!(
            (d.memory.total_kib, d.memory.current_kib),
            (512 * 1024, 256 * 1024)
        );
        assert!(
            set_memory_of(&mut d, 1024 * 1024, false).is_err(),
            "above the maximum"
        );
        set_memory_of(&mut d, 128 * 1024, true).expect("lower maximum");
        assert_eq!(
            (d.memory.total_kib, d.memory.current_kib),
            (128 * 1024, 128 * 1024)
        );
        set_memory_of(&mut d, 1024 * 1024, true).expect("raise maximum");
        assert_eq!(
            (d.memory.total_kib, d.memory.current_kib),
            (1024 * 1024, 128 * 1024)
        );
    }

    #[test]
    fn vcpus_follow_libvirts_rules() {
        let mut d = def();
        set_vcpus_of(&mut d, 2, false).expect("fewer online");
        assert_eq!((d.vcpu.count, d.vcpu.current), (4, Some(2)));
        assert!(set_vcpus_of(&mut d, 8, false).is_err(), "above the maximum");
        set_vcpus_of(&mut d, 8, true).expect("raise maximum");
        assert_eq!((d.vcpu.count, d.vcpu.current), (8, Some(2)));
        set_vcpus_of(&mut d, 2, true).expect("lower maximum");
        assert_eq!((d.vcpu.count, d.vcpu.current), (2, None));
        set_vcpus_of(&mut d, 2, false).expect("all online");
        assert_eq!(d.vcpu.current, None);
    }

    #[test]
    fn current_means_live_when_running_else_config() {
        let both = |live, config| Affect { live, config };
        assert_eq!(affect(0, "d", true, true).expect("running"), both(true, false));
        assert_eq!(affect(0, "d", false, true).expect("inactive"), both(false, true));
        assert_eq!(
            affect(AFFECT_LIVE | AFFECT_CONFIG, "d", true, true).expect("both"),
            both(true, true)
        );
        assert_eq!(
            rvirt_proto::error::from_status(&affect(AFFECT_LIVE, "d", false, true).expect_err("not running"))
                .code(),
            ErrorCode::OperationInvalid
        );
        assert!(
            affect(AFFECT_CONFIG, "d", true, false).is_err(),
            "transient has no config"
        );
        assert!(affect(8, "d", true, true).is_err(), "unknown flag");
    }
}
