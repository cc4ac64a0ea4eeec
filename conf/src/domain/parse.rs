//! Reading the XML tree into the model: syntax, types and per-attribute rules.
//!
//! Defaults that depend on the rest of the definition are filled afterwards by `postparse.rs`;
//! what this module fills is only what libvirt's own parser fills while reading (a generated
//! MAC address, `unit` scaling, a missing `<vcpu>` meaning one).

use super::dom::{El, Node, Reader};
use super::machine::{self, QemuDefaults};
use super::model::*;
use super::units;
use crate::xml::{XmlError, XmlErrorKind};

/// The highest controller index accepted (PCI buses end at 255; no other controller type comes
/// near).
pub(crate) const MAX_CONTROLLER_INDEX: u32 = 255;

/// The highest controller a drive address may name (the schema allows two digits). Checking it
/// while reading bounds the controllers added for drive addresses.
const MAX_DRIVE_CONTROLLER: u32 = 99;

/// Marks a controller whose `index` was absent; replaced by the lowest free index afterwards.
pub(crate) const INDEX_UNSET: u32 = u32::MAX;

/// How the document is read.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub reader: Reader,
    /// Drop live-only state (ids, automatic aliases, pty paths, generated tap names).
    pub inactive: bool,
    /// The driver's defaults (for a `<video>` without a model type).
    pub defaults: &'a QemuDefaults,
    /// The video model chosen when `<video>` names none (set once `<os>` is read).
    pub default_video: VideoModel,
}

fn unsupported_value<T: XmlEnum>(path: String, value: &str) -> XmlError {
    XmlError {
        kind: XmlErrorKind::Unsupported,
        message: format!(
            "unsupported value '{value}' at {path}: rvirt supports {}",
            T::expected()
        ),
        path,
    }
}

fn missing(path: String, what: &str) -> XmlError {
    XmlError::invalid(path, format!("missing {what}"))
}

fn malformed(path: String, message: String) -> XmlError {
    XmlError {
        kind: XmlErrorKind::Malformed,
        path,
        message,
    }
}

/// An enum-valued attribute.
fn enum_attr<T: XmlEnum>(el: &mut El<'_>, name: &str) -> Result<Option<T>, XmlError> {
    match el.attr(name) {
        None => Ok(None),
        Some(v) => T::from_xml(v)
            .map(Some)
            .ok_or_else(|| unsupported_value::<T>(el.attr_path(name), v)),
    }
}

/// A required enum-valued attribute.
fn req_enum_attr<T: XmlEnum>(el: &mut El<'_>, name: &str) -> Result<T, XmlError> {
    enum_attr(el, name)?.ok_or_else(|| missing(el.attr_path(name), &format!("attribute '{name}'")))
}

/// A required string attribute.
fn req_attr<'n>(el: &mut El<'n>, name: &str) -> Result<&'n str, XmlError> {
    el.attr(name)
        .ok_or_else(|| missing(el.attr_path(name), &format!("attribute '{name}'")))
}

/// An unsigned decimal number, as libvirt's parser reads it.
fn parse_u64(text: &str, path: &str) -> Result<u64, XmlError> {
    let t = text.trim();
    t.parse::<u64>().map_err(|_| {
        malformed(
            path.to_owned(),
            format!("invalid number '{t}' at {path}: expected a non-negative integer"),
        )
    })
}

fn parse_u32(text: &str, path: &str) -> Result<u32, XmlError> {
    let v = parse_u64(text, path)?;
    u32::try_from(v).map_err(|_| XmlError::invalid(path, format!("value {v} at {path} is too large")))
}

/// A number in C's `strtoul(.., 0)` syntax: decimal, `0x` hexadecimal or `0` octal.
fn parse_u32_any_base(text: &str, path: &str) -> Result<u32, XmlError> {
    let t = text.trim();
    let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8)
    } else {
        t.parse::<u32>()
    };
    parsed.map_err(|_| malformed(path.to_owned(), format!("invalid number '{t}' at {path}")))
}

fn u32_attr(el: &mut El<'_>, name: &str) -> Result<Option<u32>, XmlError> {
    match el.attr(name) {
        None => Ok(None),
        Some(v) => parse_u32(v, &el.attr_path(name)).map(Some),
    }
}

fn bool_attr(el: &mut El<'_>, name: &str, yes: &str, no: &str) -> Result<Option<bool>, XmlError> {
    match el.attr(name) {
        None => Ok(None),
        Some(v) if v == yes => Ok(Some(true)),
        Some(v) if v == no => Ok(Some(false)),
        Some(v) => Err(XmlError::invalid(
            el.attr_path(name),
            format!(
                "invalid value '{v}' at {}: expected '{yes}' or '{no}'",
                el.attr_path(name)
            ),
        )),
    }
}

fn yes_no(el: &mut El<'_>, name: &str) -> Result<Option<bool>, XmlError> {
    bool_attr(el, name, "yes", "no")
}

fn on_off(el: &mut El<'_>, name: &str) -> Result<Option<bool>, XmlError> {
    bool_attr(el, name, "on", "off")
}

/// Text of an element, `None` when empty (libvirt's XPath string() convention).
fn opt_text(el: &El<'_>) -> Option<String> {
    let t = el.text();
    if t.is_empty() { None } else { Some(t.to_owned()) }
}

/// The text of a leaf child element that is only text.
fn text_child(parent: &mut El<'_>, name: &str, ctx: &mut Ctx<'_>) -> Result<Option<String>, XmlError> {
    match parent.child(name)? {
        None => Ok(None),
        Some(el) => {
            let text = opt_text(&el);
            el.finish(&mut ctx.reader)?;
            Ok(text)
        }
    }
}

/// An empty marker element (`<readonly/>`).
fn flag_child(parent: &mut El<'_>, name: &str, ctx: &mut Ctx<'_>) -> Result<bool, XmlError> {
    match parent.child(name)? {
        None => Ok(false),
        Some(el) => {
            el.finish(&mut ctx.reader)?;
            Ok(true)
        }
    }
}

/// Parses a whole document into a definition (before post-parse).
pub(crate) fn parse_domain(xml: &str, root: &Node, ctx: &mut Ctx<'_>) -> Result<DomainDef, XmlError> {
    if root.name != "domain" {
        return Err(malformed(
            format!("/{}", root.name),
            format!("expected a <domain> document, found <{}>", root.name),
        ));
    }
    let mut d = El::root(root);
    let virt_type: VirtType = req_enum_attr(&mut d, "type")?;
    let id = match d.attr("id") {
        Some(v) if !ctx.inactive => {
            let path = d.attr_path("id");
            let t = v.trim();
            if t == "-1" {
                None
            } else {
                Some(parse_u32(t, &path)?)
            }
        }
        _ => None,
    };
    let namespaces = root
        .attrs
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("xmlns:").map(|p| (p.to_owned(), v.clone())))
        .collect();

    let name = match d.child("name")? {
        None => return Err(missing("/domain/name".into(), "domain name (<name>)")),
        Some(el) => {
            let t = el.text().to_owned();
            el.finish(&mut ctx.reader)?;
            t
        }
    };
    let uuid = match d.child("uuid")? {
        None => None,
        Some(el) => {
            let t = el.text().to_owned();
            let path = el.path().to_owned();
            el.finish(&mut ctx.reader)?;
            if t.trim().is_empty() {
                None
            } else {
                Some(crate::xml::canonical_uuid(&t).ok_or_else(|| {
                    XmlError::invalid(
                        path,
                        format!("malformed UUID '{}': expected 32 hexadecimal digits", t.trim()),
                    )
                })?)
            }
        }
    };
    let title = text_child(&mut d, "title", ctx)?;
    let description = text_child(&mut d, "description", ctx)?;
    let metadata = match d.child("metadata")? {
        None => None,
        Some(mut el) => {
            if !el.text().trim().is_empty() {
                return Err(XmlError::invalid(
                    el.path(),
                    "<metadata> may contain only elements, not text",
                ));
            }
            el.consume_all();
            let raw = &xml[el.node().inner.clone()];
            el.finish(&mut ctx.reader)?;
            if raw.trim().is_empty() {
                None
            } else {
                Some(raw.to_owned())
            }
        }
    };
    let memory = parse_memory(&mut d, ctx)?;
    let vcpu = parse_vcpu(&mut d, ctx)?;
    let os = match d.child("os")? {
        None => return Err(missing("/domain/os".into(), "<os> with an <os><type>")),
        Some(el) => parse_os(el, ctx)?,
    };
    let arch = os.arch.as_deref().unwrap_or(&ctx.defaults.arch);
    ctx.default_video = machine::default_video_model(arch, ctx.defaults);
    let features = match d.child("features")? {
        None => Features::default(),
        Some(mut el) => {
            let f = Features {
                acpi: flag_child(&mut el, "acpi", ctx)?,
                apic: flag_child(&mut el, "apic", ctx)?,
                pae: flag_child(&mut el, "pae", ctx)?,
            };
            el.finish(&mut ctx.reader)?;
            f
        }
    };
    let cpu = match d.child("cpu")? {
        None => None,
        Some(el) => Some(parse_cpu(el, ctx)?),
    };
    let clock = match d.child("clock")? {
        None => Clock {
            offset: ClockOffset::Utc,
            timers: Vec::new(),
        },
        Some(el) => parse_clock(el, ctx)?,
    };
    let on_poweroff = parse_lifecycle(&mut d, "on_poweroff", LifecycleAction::Destroy, false, ctx)?;
    let on_reboot = parse_lifecycle(&mut d, "on_reboot", LifecycleAction::Restart, false, ctx)?;
    let on_crash = parse_lifecycle(&mut d, "on_crash", LifecycleAction::Destroy, true, ctx)?;
    let devices = match d.child("devices")? {
        None => Devices::default(),
        Some(el) => parse_devices(el, ctx)?,
    };
    d.finish(&mut ctx.reader)?;
    Ok(DomainDef {
        virt_type,
        id,
        namespaces,
        name,
        uuid: uuid.unwrap_or_else(crate::xml::new_uuid),
        title,
        description,
        metadata,
        memory,
        vcpu,
        os,
        features,
        cpu,
        clock,
        on_poweroff,
        on_reboot,
        on_crash,
        devices,
        ignored: Vec::new(),
    })
}

/// A memory size element (`<memory unit='GiB'>4</memory>`), in KiB.
fn memory_kib(el: &mut El<'_>) -> Result<u64, XmlError> {
    let value = parse_u64(el.text(), el.path())?;
    let unit = el.attr("unit");
    let unit_path = el.attr_path("unit");
    units::to_kib(value, unit).map_err(|message| {
        let path = if unit.is_some() && message.contains("unit") {
            unit_path
        } else {
            el.path().to_owned()
        };
        XmlError::invalid(path, message)
    })
}

fn parse_memory(d: &mut El<'_>, ctx: &mut Ctx<'_>) -> Result<Memory, XmlError> {
    let total_kib = match d.child("memory")? {
        None => return Err(missing("/domain/memory".into(), "memory size (<memory>)")),
        Some(mut el) => {
            let v = memory_kib(&mut el)?;
            el.finish(&mut ctx.reader)?;
            v
        }
    };
    let current_kib = match d.child("currentMemory")? {
        None => 0,
        Some(mut el) => {
            let v = memory_kib(&mut el)?;
            el.finish(&mut ctx.reader)?;
            v
        }
    };
    let max = match d.child("maxMemory")? {
        None => None,
        Some(mut el) => {
            let kib = memory_kib(&mut el)?;
            let slots = u32_attr(&mut el, "slots")?.unwrap_or(0);
            el.finish(&mut ctx.reader)?;
            Some(MaxMemory { kib, slots })
        }
    };
    Ok(Memory {
        total_kib,
        current_kib,
        max,
    })
}

fn parse_vcpu(d: &mut El<'_>, ctx: &mut Ctx<'_>) -> Result<Vcpu, XmlError> {
    let Some(mut el) = d.child("vcpu")? else {
        return Ok(Vcpu {
            count: 1,
            current: None,
            placement_auto: false,
            cpuset: None,
        });
    };
    let count = parse_u32(el.text(), el.path())?;
    let current = u32_attr(&mut el, "current")?;
    let placement_auto = match el.attr("placement") {
        None | Some("static") => false,
        Some("auto") => true,
        Some(v) => {
            return Err(XmlError::invalid(
                el.attr_path("placement"),
                format!("invalid vCPU placement '{v}': expected 'static' or 'auto'"),
            ));
        }
    };
    let cpuset = match el.attr("cpuset") {
        None => None,
        Some(v) => {
            let path = el.attr_path("cpuset");
            let canonical = units::canonical_cpuset(v).map_err(|m| XmlError::invalid(path, m))?;
            // libvirt ignores a cpuset when placement is automatic.
            if placement_auto { None } else { Some(canonical) }
        }
    };
    el.finish(&mut ctx.reader)?;
    Ok(Vcpu {
        count,
        current,
        placement_auto,
        cpuset,
    })
}

fn parse_os(mut os: El<'_>, ctx: &mut Ctx<'_>) -> Result<Os, XmlError> {
    let (os_type, arch, machine) = match os.child("type")? {
        None => return Err(missing("/domain/os/type".into(), "an os <type>")),
        Some(mut el) => {
            let text = el.text().trim().to_owned();
            let path = el.path().to_owned();
            let os_type = OsType::from_xml(&text).ok_or_else(|| unsupported_value::<OsType>(path, &text))?;
            let arch = el.attr("arch").map(str::to_owned);
            let machine = el.attr("machine").map(str::to_owned);
            el.finish(&mut ctx.reader)?;
            (os_type, arch, machine)
        }
    };
    let mut boot = Vec::new();
    for mut el in os.children("boot") {
        let dev: BootDev = req_enum_attr(&mut el, "dev")?;
        let path = el.path().to_owned();
        el.finish(&mut ctx.reader)?;
        if boot.len() == 4 {
            return Err(XmlError::invalid(path, "at most 4 <boot> devices may be listed"));
        }
        boot.push(dev);
    }
    let kernel = text_child(&mut os, "kernel", ctx)?;
    let initrd = text_child(&mut os, "initrd", ctx)?;
    let cmdline = text_child(&mut os, "cmdline", ctx)?;
    let loader = match os.child("loader")? {
        None => None,
        Some(mut el) => {
            let readonly = yes_no(&mut el, "readonly")?;
            let secure = yes_no(&mut el, "secure")?;
            let kind = enum_attr(&mut el, "type")?;
            let path = el.text().trim();
            let path = if path.is_empty() {
                None
            } else {
                Some(path.to_owned())
            };
            el.finish(&mut ctx.reader)?;
            Some(Loader {
                path,
                readonly,
                secure,
                kind,
            })
        }
    };
    let nvram = match os.child("nvram")? {
        None => None,
        Some(mut el) => {
            let template = el.attr("template").map(str::to_owned);
            let path = el.text().trim();
            let path = if path.is_empty() {
                None
            } else {
                Some(path.to_owned())
            };
            el.finish(&mut ctx.reader)?;
            Some(Nvram { path, template })
        }
    };
    os.finish(&mut ctx.reader)?;
    Ok(Os {
        os_type,
        arch,
        machine,
        boot,
        kernel,
        initrd,
        cmdline,
        loader,
        nvram,
    })
}

fn parse_cpu(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Cpu, XmlError> {
    let mode: CpuMode = enum_attr(&mut el, "mode")?.unwrap_or(CpuMode::Custom);
    let match_: Option<CpuMatch> = enum_attr(&mut el, "match")?;
    let check: Option<CpuCheck> = enum_attr(&mut el, "check")?;
    let migratable = on_off(&mut el, "migratable")?;
    if migratable.is_some() && mode != CpuMode::HostPassthrough {
        return Err(XmlError::invalid(
            el.attr_path("migratable"),
            "attribute 'migratable' is only allowed with mode 'host-passthrough'",
        ));
    }
    let model = match el.child("model")? {
        None => None,
        Some(mut m) => {
            let fallback = enum_attr(&mut m, "fallback")?;
            let name = m.text().trim();
            let name = if name.is_empty() {
                None
            } else {
                Some(name.to_owned())
            };
            m.finish(&mut ctx.reader)?;
            Some(CpuModel { name, fallback })
        }
    };
    el.finish(&mut ctx.reader)?;
    let has_name = model.as_ref().is_some_and(|m| m.name.is_some());
    let match_ = match mode {
        CpuMode::Custom if has_name => Some(match_.unwrap_or(CpuMatch::Exact)),
        CpuMode::Custom => match_,
        _ => None,
    };
    Ok(Cpu {
        mode,
        match_,
        check,
        migratable,
        model,
    })
}

fn parse_clock(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Clock, XmlError> {
    let offset = match el.attr("offset").unwrap_or("utc") {
        "utc" => ClockOffset::Utc,
        "localtime" => ClockOffset::Localtime,
        "variable" => {
            let adjustment = match el.attr("adjustment") {
                None => 0,
                Some(v) => {
                    let path = el.attr_path("adjustment");
                    v.trim().parse::<i64>().map_err(|_| {
                        malformed(path.clone(), format!("invalid clock adjustment '{v}' at {path}"))
                    })?
                }
            };
            let basis = enum_attr(&mut el, "basis")?.unwrap_or(ClockBasis::Utc);
            ClockOffset::Variable { adjustment, basis }
        }
        "timezone" => ClockOffset::Timezone(req_attr(&mut el, "timezone")?.to_owned()),
        other => {
            return Err(XmlError {
                kind: XmlErrorKind::Unsupported,
                path: el.attr_path("offset"),
                message: format!(
                    "unsupported clock offset '{other}': rvirt supports utc, localtime, variable, timezone"
                ),
            });
        }
    };
    let mut timers = Vec::new();
    for mut t in el.children("timer") {
        let timer = Timer {
            name: req_enum_attr(&mut t, "name")?,
            present: yes_no(&mut t, "present")?,
            tickpolicy: enum_attr(&mut t, "tickpolicy")?,
            track: enum_attr(&mut t, "track")?,
        };
        t.finish(&mut ctx.reader)?;
        timers.push(timer);
    }
    el.finish(&mut ctx.reader)?;
    Ok(Clock { offset, timers })
}

fn parse_lifecycle(
    d: &mut El<'_>,
    name: &str,
    default: LifecycleAction,
    crash: bool,
    ctx: &mut Ctx<'_>,
) -> Result<LifecycleAction, XmlError> {
    let Some(el) = d.child(name)? else {
        return Ok(default);
    };
    let text = el.text().trim().to_owned();
    let path = el.path().to_owned();
    el.finish(&mut ctx.reader)?;
    let action = LifecycleAction::from_xml(&text)
        .ok_or_else(|| unsupported_value::<LifecycleAction>(path.clone(), &text))?;
    if !crash
        && matches!(
            action,
            LifecycleAction::CoredumpDestroy | LifecycleAction::CoredumpRestart
        )
    {
        return Err(XmlError::invalid(
            path,
            format!("<{name}> cannot be '{text}': only <on_crash> can dump core"),
        ));
    }
    Ok(action)
}

fn parse_devices(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Devices, XmlError> {
    let mut devices = Devices::default();
    for child in el.all_children() {
        let device = match child.node().name.as_str() {
            "emulator" => {
                if devices.emulator.is_some() {
                    return Err(XmlError::invalid(child.path(), "<emulator> may appear only once"));
                }
                devices.emulator = opt_text(&child).map(|s| s.trim().to_owned());
                child.finish(&mut ctx.reader)?;
                continue;
            }
            "disk" => Device::Disk(parse_disk(child, ctx)?),
            "controller" => Device::Controller(parse_controller(child, ctx)?),
            "interface" => Device::Interface(parse_interface(child, ctx)?),
            "serial" => Device::Serial(parse_chardev(child, ctx, false)?),
            "console" => Device::Console(parse_chardev(child, ctx, true)?),
            "input" => Device::Input(parse_input(child, ctx)?),
            "graphics" => Device::Graphics(parse_graphics(child, ctx)?),
            "video" => Device::Video(parse_video(child, ctx)?),
            "audio" => Device::Audio(parse_audio(child, ctx)?),
            "rng" => Device::Rng(parse_rng(child, ctx)?),
            "watchdog" => Device::Watchdog(parse_watchdog(child, ctx)?),
            "memballoon" => Device::Memballoon(parse_memballoon(child, ctx)?),
            _ => {
                ctx.reader.unsupported(child.path().to_owned(), "device")?;
                continue;
            }
        };
        devices.list.push(device);
    }
    el.finish(&mut ctx.reader)?;
    Ok(devices)
}

/// `<alias>`, `<address>` and (when allowed) `<boot>` of a device.
fn parse_info(el: &mut El<'_>, ctx: &mut Ctx<'_>, allow_boot: bool) -> Result<DeviceInfo, XmlError> {
    let mut info = DeviceInfo::default();
    if let Some(mut a) = el.child("alias")? {
        let name = req_attr(&mut a, "name")?.to_owned();
        a.finish(&mut ctx.reader)?;
        if !ctx.inactive || name.starts_with("ua-") {
            info.alias = Some(name);
        }
    }
    if let Some(a) = el.child("address")? {
        info.address = Some(parse_address(a, ctx)?);
    }
    if allow_boot && let Some(mut b) = el.child("boot")? {
        let path = b.attr_path("order");
        let order = parse_u32(req_attr(&mut b, "order")?, &path)?;
        if order == 0 {
            return Err(XmlError::invalid(path, "boot order must be 1 or more"));
        }
        b.finish(&mut ctx.reader)?;
        info.boot_order = Some(order);
    }
    Ok(info)
}

fn parse_address(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Address, XmlError> {
    let kind = req_attr(&mut el, "type")?;
    let address = match kind {
        "pci" => {
            let mut field = |name: &str, max: u32| -> Result<u32, XmlError> {
                match el.attr(name) {
                    None => Ok(0),
                    Some(v) => {
                        let path = el.attr_path(name);
                        let n = parse_u32_any_base(v, &path)?;
                        if n > max {
                            return Err(XmlError::invalid(
                                path,
                                format!("invalid PCI address {name} {v}: must be at most {max:#x}"),
                            ));
                        }
                        Ok(n)
                    }
                }
            };
            let domain = field("domain", 0xffff)?;
            let bus = field("bus", 0xff)?;
            let slot = field("slot", 0x1f)?;
            let function = field("function", 7)?;
            let multifunction = on_off(&mut el, "multifunction")?;
            Address::Pci(PciAddress {
                domain,
                bus,
                slot,
                function,
                multifunction,
            })
        }
        "drive" => Address::Drive(DriveAddress {
            controller: match u32_attr(&mut el, "controller")? {
                Some(c) if c > MAX_DRIVE_CONTROLLER => {
                    return Err(XmlError::invalid(
                        el.attr_path("controller"),
                        format!("drive address controller {c} is too large: at most {MAX_DRIVE_CONTROLLER}"),
                    ));
                }
                c => c.unwrap_or(0),
            },
            bus: u32_attr(&mut el, "bus")?.unwrap_or(0),
            target: u32_attr(&mut el, "target")?.unwrap_or(0),
            unit: u32_attr(&mut el, "unit")?.unwrap_or(0),
        }),
        "usb" => Address::Usb(UsbAddress {
            bus: u32_attr(&mut el, "bus")?.unwrap_or(0),
            port: el.attr("port").map(str::to_owned),
        }),
        other => {
            return Err(XmlError {
                kind: XmlErrorKind::Unsupported,
                path: el.attr_path("type"),
                message: format!("unsupported address type '{other}': rvirt supports pci, drive, usb"),
            });
        }
    };
    el.finish(&mut ctx.reader)?;
    Ok(address)
}

fn parse_disk(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Disk, XmlError> {
    let disk_type: DiskType = enum_attr(&mut el, "type")?.unwrap_or(DiskType::File);
    let device: DiskDevice = enum_attr(&mut el, "device")?.unwrap_or(DiskDevice::Disk);
    let mut driver = DiskDriver::default();
    if let Some(mut d) = el.child("driver")? {
        driver.name = d.attr("name").map(str::to_owned);
        driver.format = enum_attr(&mut d, "type")?;
        driver.cache = match d.attr("cache") {
            None | Some("default") => None,
            Some(v) => Some(
                DiskCache::from_xml(v)
                    .ok_or_else(|| unsupported_value::<DiskCache>(d.attr_path("cache"), v))?,
            ),
        };
        driver.io = enum_attr(&mut d, "io")?;
        driver.discard = enum_attr(&mut d, "discard")?;
        d.finish(&mut ctx.reader)?;
    }
    let mut encryption = None;
    let source = match el.child("source")? {
        None => None,
        Some(mut s) => {
            if let Some(e) = s.child("encryption")? {
                encryption = Some(parse_encryption(e, true, ctx)?);
            }
            let source = match disk_type {
                DiskType::File => s.attr("file").map(|p| DiskSource::File(p.to_owned())),
                DiskType::Block => s.attr("dev").map(|p| DiskSource::Block(p.to_owned())),
                DiskType::Volume => Some(DiskSource::Volume {
                    pool: req_attr(&mut s, "pool")?.to_owned(),
                    volume: req_attr(&mut s, "volume")?.to_owned(),
                }),
            };
            s.finish(&mut ctx.reader)?;
            source
        }
    };
    let (target, bus) = match el.child("target")? {
        None => {
            return Err(missing(
                format!("{}/target", el.path()),
                "disk target (<target dev>)",
            ));
        }
        Some(mut t) => {
            // "ioemu:" is a Xen-era prefix libvirt drops.
            let dev = req_attr(&mut t, "dev")?;
            let dev = dev.strip_prefix("ioemu:").unwrap_or(dev).to_owned();
            let bus = enum_attr(&mut t, "bus")?;
            t.finish(&mut ctx.reader)?;
            (dev, bus)
        }
    };
    let readonly = flag_child(&mut el, "readonly", ctx)?;
    let shareable = flag_child(&mut el, "shareable", ctx)?;
    if let Some(e) = el.child("encryption")? {
        if encryption.is_some() {
            return Err(malformed(
                format!("{}/encryption", el.path()),
                "<encryption> is given both in <disk> and in its <source>".to_owned(),
            ));
        }
        encryption = Some(parse_encryption(e, false, ctx)?);
    }
    let info = parse_info(&mut el, ctx, true)?;
    el.finish(&mut ctx.reader)?;
    Ok(Disk {
        disk_type,
        device,
        driver,
        source,
        target,
        bus,
        readonly,
        shareable,
        encryption,
        info,
    })
}

/// `<encryption format='luks'><secret type='passphrase' uuid='…'/></encryption>`.
fn parse_encryption(mut el: El<'_>, in_source: bool, ctx: &mut Ctx<'_>) -> Result<DiskEncryption, XmlError> {
    let format: EncryptionFormat = req_enum_attr(&mut el, "format")?;
    match el.attr("engine") {
        None | Some("qemu") => {}
        Some(other) => {
            return Err(XmlError {
                kind: XmlErrorKind::Unsupported,
                message: format!(
                    "unsupported value '{other}' at {}: rvirt supports qemu",
                    el.attr_path("engine")
                ),
                path: el.attr_path("engine"),
            });
        }
    }
    let Some(mut secret_el) = el.child("secret")? else {
        return Err(missing(
            format!("{}/secret", el.path()),
            "the passphrase secret (<secret type='passphrase' uuid='…'/>)",
        ));
    };
    match req_attr(&mut secret_el, "type")? {
        "passphrase" => {}
        other => {
            return Err(XmlError {
                kind: XmlErrorKind::Unsupported,
                message: format!(
                    "unsupported value '{other}' at {}: rvirt supports passphrase",
                    secret_el.attr_path("type")
                ),
                path: secret_el.attr_path("type"),
            });
        }
    }
    let secret = match (secret_el.attr("uuid"), secret_el.attr("usage")) {
        (Some(uuid), None) => EncryptionSecret::Uuid(
            crate::xml::canonical_uuid(uuid)
                .ok_or_else(|| malformed(secret_el.attr_path("uuid"), format!("'{uuid}' is not a UUID")))?,
        ),
        (None, Some(usage)) => EncryptionSecret::Usage(usage.to_owned()),
        _ => {
            return Err(malformed(
                secret_el.path().to_owned(),
                "a passphrase secret needs exactly one of 'uuid' and 'usage'".to_owned(),
            ));
        }
    };
    secret_el.finish(&mut ctx.reader)?;
    el.finish(&mut ctx.reader)?;
    Ok(DiskEncryption {
        format,
        secret,
        in_source,
    })
}

fn parse_controller(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Controller, XmlError> {
    let kind: ControllerType = req_enum_attr(&mut el, "type")?;
    let index = match el.attr("index") {
        None => INDEX_UNSET,
        Some(v) => {
            let path = el.attr_path("index");
            let n = parse_u32(v, &path)?;
            if n > MAX_CONTROLLER_INDEX {
                return Err(XmlError::invalid(
                    path,
                    format!("controller index {n} is too large: at most {MAX_CONTROLLER_INDEX}"),
                ));
            }
            n
        }
    };
    let model = match kind {
        ControllerType::Ide => ControllerModel::Ide,
        ControllerType::Sata => ControllerModel::Sata,
        ControllerType::Scsi => ControllerModel::Scsi(enum_attr(&mut el, "model")?),
        ControllerType::Usb => ControllerModel::Usb(enum_attr(&mut el, "model")?),
        ControllerType::Pci => ControllerModel::Pci(enum_attr(&mut el, "model")?),
    };
    let mut pci = PciControllerOptions::default();
    if kind == ControllerType::Pci {
        if let Some(mut m) = el.child("model")? {
            pci.model_name = Some(req_enum_attr(&mut m, "name")?);
            m.finish(&mut ctx.reader)?;
        }
        if let Some(mut t) = el.child("target")? {
            pci.chassis_nr = u32_attr(&mut t, "chassisNr")?;
            pci.chassis = u32_attr(&mut t, "chassis")?;
            pci.port = match t.attr("port") {
                None => None,
                Some(v) => Some(parse_u32_any_base(v, &t.attr_path("port"))?),
            };
            pci.hotplug = on_off(&mut t, "hotplug")?;
            for (name, value) in [
                ("chassisNr", pci.chassis_nr),
                ("chassis", pci.chassis),
                ("port", pci.port),
            ] {
                if value.is_some_and(|v| v > 255) {
                    return Err(XmlError::invalid(
                        t.attr_path(name),
                        format!("PCI controller target {name} must be at most 255"),
                    ));
                }
            }
            t.finish(&mut ctx.reader)?;
        }
    }
    let info = parse_info(&mut el, ctx, false)?;
    el.finish(&mut ctx.reader)?;
    Ok(Controller {
        model,
        index,
        pci,
        info,
    })
}

/// A MAC address in canonical form (`52:54:00:ab:cd:ef`).
pub(crate) fn canonical_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// A new MAC address with QEMU's `52:54:00` prefix, as libvirt's QEMU driver generates.
pub fn generate_mac() -> String {
    let random = uuid::Uuid::new_v4();
    let b = random.as_bytes();
    format_mac([0x52, 0x54, 0x00, b[0], b[1], b[2]])
}

fn parse_interface(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Interface, XmlError> {
    let kind: InterfaceType = req_enum_attr(&mut el, "type")?;
    let mac = match el.child("mac")? {
        None => generate_mac(),
        Some(mut m) => {
            let path = m.attr_path("address");
            let text = req_attr(&mut m, "address")?;
            let bytes = canonical_mac(text).ok_or_else(|| {
                XmlError::invalid(path.clone(), format!("unable to parse MAC address '{text}'"))
            })?;
            if bytes[0] & 1 == 1 {
                return Err(XmlError::invalid(
                    path,
                    format!("expected a unicast MAC address, found multicast '{text}'"),
                ));
            }
            m.finish(&mut ctx.reader)?;
            format_mac(bytes)
        }
    };
    let source = match kind {
        InterfaceType::User => InterfaceSource::User,
        InterfaceType::Network | InterfaceType::Bridge => {
            let attr = if kind == InterfaceType::Network {
                "network"
            } else {
                "bridge"
            };
            let Some(mut s) = el.child("source")? else {
                return Err(missing(
                    format!("{}/source", el.path()),
                    &format!("<source {attr}='…'> for an interface of type '{kind}'"),
                ));
            };
            let value = req_attr(&mut s, attr)?.to_owned();
            s.finish(&mut ctx.reader)?;
            if kind == InterfaceType::Network {
                InterfaceSource::Network(value)
            } else {
                InterfaceSource::Bridge(value)
            }
        }
    };
    let target_dev = match el.child("target")? {
        None => None,
        Some(mut t) => {
            let dev = req_attr(&mut t, "dev")?.to_owned();
            t.finish(&mut ctx.reader)?;
            // Tap names the daemon generated are not part of the persistent configuration.
            if ctx.inactive && (dev.starts_with("vnet") || dev.starts_with("macvtap")) {
                None
            } else {
                Some(dev)
            }
        }
    };
    let model = match el.child("model")? {
        None => None,
        Some(mut m) => {
            let path = m.attr_path("type");
            let value = req_attr(&mut m, "type")?;
            let lower = value.to_ascii_lowercase();
            let model =
                NetModel::from_xml(&lower).ok_or_else(|| unsupported_value::<NetModel>(path, value))?;
            m.finish(&mut ctx.reader)?;
            Some(model)
        }
    };
    let info = parse_info(&mut el, ctx, true)?;
    el.finish(&mut ctx.reader)?;
    Ok(Interface {
        source,
        mac,
        target_dev,
        model,
        info,
    })
}

/// The host side of a character device: `type` on `el` plus its `<source>` and `<protocol>`.
fn parse_chr_source(el: &mut El<'_>, kind: ChrType, ctx: &mut Ctx<'_>) -> Result<ChrSource, XmlError> {
    let mut source_el = el.child("source")?;
    fn get(source: &mut Option<El<'_>>, name: &str) -> Option<String> {
        source.as_mut().and_then(|s| s.attr(name).map(str::to_owned))
    }
    let source = match kind {
        ChrType::Pty => {
            let path = get(&mut source_el, "path");
            ChrSource::Pty {
                path: if ctx.inactive { None } else { path },
            }
        }
        ChrType::File => {
            let path = get(&mut source_el, "path");
            let append = match source_el.as_mut() {
                Some(s) => on_off(s, "append")?,
                None => None,
            };
            ChrSource::File {
                path: path.ok_or_else(|| {
                    missing(format!("{}/source/@path", el.path()), "file path (<source path>)")
                })?,
                append,
            }
        }
        ChrType::Unix | ChrType::Tcp => {
            let mode = match source_el.as_mut() {
                Some(s) => enum_attr(s, "mode")?.unwrap_or(ChrMode::Connect),
                None => ChrMode::Connect,
            };
            if kind == ChrType::Unix {
                ChrSource::Unix {
                    mode,
                    path: get(&mut source_el, "path"),
                }
            } else {
                let host = get(&mut source_el, "host");
                let service = get(&mut source_el, "service").ok_or_else(|| {
                    missing(
                        format!("{}/source/@service", el.path()),
                        "TCP port (<source service>)",
                    )
                })?;
                let protocol = match el.child("protocol")? {
                    None => ChrProtocol::Raw,
                    Some(mut p) => {
                        let v = enum_attr(&mut p, "type")?.unwrap_or(ChrProtocol::Raw);
                        p.finish(&mut ctx.reader)?;
                        v
                    }
                };
                ChrSource::Tcp {
                    mode,
                    host,
                    service,
                    protocol,
                }
            }
        }
    };
    if let Some(s) = source_el {
        s.finish(&mut ctx.reader)?;
    }
    Ok(source)
}

fn parse_chardev(mut el: El<'_>, ctx: &mut Ctx<'_>, console: bool) -> Result<Chardev, XmlError> {
    let kind: ChrType = req_enum_attr(&mut el, "type")?;
    let tty = el.attr("tty").map(str::to_owned);
    let mut source = parse_chr_source(&mut el, kind, ctx)?;
    if let ChrSource::Pty { path } = &mut source
        && path.is_none()
        && !ctx.inactive
    {
        *path = tty;
    }
    let mut dev = Chardev {
        source,
        port: None,
        serial_type: None,
        serial_model: None,
        console_type: None,
        info: DeviceInfo::default(),
    };
    if let Some(mut t) = el.child("target")? {
        dev.port = u32_attr(&mut t, "port")?;
        if console {
            dev.console_type = enum_attr(&mut t, "type")?;
        } else {
            dev.serial_type = enum_attr(&mut t, "type")?;
            if let Some(mut m) = t.child("model")? {
                dev.serial_model = Some(req_enum_attr(&mut m, "name")?);
                m.finish(&mut ctx.reader)?;
            }
        }
        t.finish(&mut ctx.reader)?;
    }
    dev.info = parse_info(&mut el, ctx, false)?;
    if dev.info.address.is_some() {
        return Err(XmlError {
            kind: XmlErrorKind::Unsupported,
            path: format!("{}/address", el.path()),
            message: "unsupported XML element: an address on a serial port or console".into(),
        });
    }
    el.finish(&mut ctx.reader)?;
    Ok(dev)
}

fn parse_input(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Input, XmlError> {
    let input_type = req_enum_attr(&mut el, "type")?;
    let bus = enum_attr(&mut el, "bus")?;
    let info = parse_info(&mut el, ctx, false)?;
    el.finish(&mut ctx.reader)?;
    Ok(Input {
        input_type,
        bus,
        info,
    })
}

fn parse_graphics(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Graphics, XmlError> {
    let graphics_type: GraphicsType = req_enum_attr(&mut el, "type")?;
    let port_path = el.attr_path("port");
    let port_attr: Option<i64> = match el.attr("port") {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<i64>()
                .map_err(|_| malformed(port_path.clone(), format!("invalid port '{v}' at {port_path}")))?,
        ),
    };
    if let Some(p) = port_attr
        && !(p == -1 || (0..=65535).contains(&p))
    {
        return Err(XmlError::invalid(port_path, format!("invalid graphics port {p}")));
    }
    let autoport_attr = yes_no(&mut el, "autoport")?;
    let (mut port, mut autoport) = match port_attr {
        None | Some(-1) => (None, graphics_type == GraphicsType::Vnc || port_attr == Some(-1)),
        Some(0) => (None, false),
        Some(p) => (u32::try_from(p).ok(), false),
    };
    if let Some(a) = autoport_attr {
        autoport = a;
    }
    if autoport && ctx.inactive {
        port = None;
    }
    let listen_attr = el.attr("listen").map(str::to_owned);
    let socket_attr = if graphics_type == GraphicsType::Vnc {
        el.attr("socket").map(str::to_owned)
    } else {
        None
    };
    let mut listens = Vec::new();
    for mut l in el.children("listen") {
        let listen = match l.attr("type").unwrap_or("address") {
            "address" => Listen::Address(l.attr("address").map(str::to_owned)),
            "socket" => Listen::Socket(l.attr("socket").map(str::to_owned)),
            "none" => Listen::None,
            other => {
                return Err(XmlError {
                    kind: XmlErrorKind::Unsupported,
                    path: l.attr_path("type"),
                    message: format!(
                        "unsupported listen type '{other}': rvirt supports address, socket, none"
                    ),
                });
            }
        };
        let path = l.path().to_owned();
        l.finish(&mut ctx.reader)?;
        listens.push((listen, path));
    }
    if listens.len() > 1 {
        return Err(XmlError::invalid(
            listens[1].1.clone(),
            "only one <listen> is supported per graphics device",
        ));
    }
    let mut listen = listens.pop().map(|(l, _)| l);
    if let Some(addr) = listen_attr {
        match &listen {
            None => listen = Some(Listen::Address(Some(addr))),
            Some(Listen::Address(Some(a))) if *a == addr => {}
            Some(Listen::Address(None)) => listen = Some(Listen::Address(Some(addr))),
            Some(_) => {
                return Err(XmlError::invalid(
                    el.attr_path("listen"),
                    format!(
                        "graphics 'listen' attribute '{addr}' must match the address of the <listen> element"
                    ),
                ));
            }
        }
    }
    if let Some(sock) = socket_attr {
        match &listen {
            None => listen = Some(Listen::Socket(Some(sock))),
            Some(Listen::Socket(Some(s))) if *s == sock => {}
            Some(Listen::Socket(None)) => listen = Some(Listen::Socket(Some(sock))),
            Some(_) => {
                return Err(XmlError::invalid(
                    el.attr_path("socket"),
                    format!(
                        "graphics 'socket' attribute '{sock}' must match the socket of the <listen> element"
                    ),
                ));
            }
        }
    }
    el.finish(&mut ctx.reader)?;
    Ok(Graphics {
        graphics_type,
        port,
        autoport,
        listen,
    })
}

fn parse_video(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Video, XmlError> {
    let mut video = Video {
        model: ctx.default_video,
        vram: None,
        ram: None,
        vgamem: None,
        heads: None,
        primary: false,
        info: DeviceInfo::default(),
    };
    if let Some(mut m) = el.child("model")? {
        if let Some(model) = enum_attr(&mut m, "type")? {
            video.model = model;
        }
        video.vram = u32_attr(&mut m, "vram")?;
        video.ram = u32_attr(&mut m, "ram")?;
        video.vgamem = u32_attr(&mut m, "vgamem")?;
        video.heads = u32_attr(&mut m, "heads")?;
        video.primary = yes_no(&mut m, "primary")?.unwrap_or(false);
        m.finish(&mut ctx.reader)?;
    }
    video.info = parse_info(&mut el, ctx, false)?;
    el.finish(&mut ctx.reader)?;
    Ok(video)
}

fn parse_rng(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Rng, XmlError> {
    let model: RngModel = req_enum_attr(&mut el, "model")?;
    let backend = match el.child("backend")? {
        None => {
            return Err(missing(
                format!("{}/backend", el.path()),
                "RNG backend (<backend>)",
            ));
        }
        Some(mut b) => {
            let backend = match req_attr(&mut b, "model")? {
                "random" => {
                    let path = b.text().trim();
                    RngBackend::Random(if path.is_empty() {
                        None
                    } else {
                        Some(path.to_owned())
                    })
                }
                "egd" => {
                    let kind: ChrType = req_enum_attr(&mut b, "type")?;
                    RngBackend::Egd(parse_chr_source(&mut b, kind, ctx)?)
                }
                other => {
                    return Err(XmlError {
                        kind: XmlErrorKind::Unsupported,
                        path: b.attr_path("model"),
                        message: format!("unsupported RNG backend '{other}': rvirt supports random, egd"),
                    });
                }
            };
            b.finish(&mut ctx.reader)?;
            backend
        }
    };
    let info = parse_info(&mut el, ctx, false)?;
    el.finish(&mut ctx.reader)?;
    Ok(Rng { model, backend, info })
}

fn parse_watchdog(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Watchdog, XmlError> {
    let model = req_enum_attr(&mut el, "model")?;
    let action = enum_attr(&mut el, "action")?.unwrap_or(WatchdogAction::Reset);
    let info = parse_info(&mut el, ctx, false)?;
    el.finish(&mut ctx.reader)?;
    Ok(Watchdog { model, action, info })
}

fn parse_memballoon(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Memballoon, XmlError> {
    let model = req_enum_attr(&mut el, "model")?;
    let stats_period = match el.child("stats")? {
        None => None,
        Some(mut s) => {
            let v = u32_attr(&mut s, "period")?;
            s.finish(&mut ctx.reader)?;
            v
        }
    };
    let info = parse_info(&mut el, ctx, false)?;
    el.finish(&mut ctx.reader)?;
    Ok(Memballoon {
        model,
        stats_period,
        info,
    })
}

fn parse_audio(mut el: El<'_>, ctx: &mut Ctx<'_>) -> Result<Audio, XmlError> {
    let path = el.attr_path("id");
    let id = parse_u32(req_attr(&mut el, "id")?, &path)?;
    if !(1..=255).contains(&id) {
        return Err(XmlError::invalid(
            path,
            format!("audio id {id} must be between 1 and 255"),
        ));
    }
    let audio_type = req_enum_attr(&mut el, "type")?;
    el.finish(&mut ctx.reader)?;
    Ok(Audio { id, audio_type })
}
