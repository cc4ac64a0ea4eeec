//! Domain commands: `list`, `define`, `start`, `dominfo`, ... with virsh's messages.

use rvirt::Domain;
use rvirt_proto::v1::*;

use super::{CmdError, CmdResult, affect_flags, exclusive, read_file};
use crate::format;
use crate::parse::{Args, scaled_size};
use crate::shell::Shell;

/// Which ways a command may name a domain (virsh's `VIRSH_BYID|BYUUID|BYNAME`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct By {
    id: bool,
    uuid: bool,
    name: bool,
}

pub(crate) const ANY: By = By {
    id: true,
    uuid: true,
    name: true,
};

/// Finds a domain as virsh does: by id when the text is a number, by UUID when it has a UUID's
/// length, then by name; the error names the text and gives the last lookup's reason.
pub(crate) async fn lookup(sh: &mut Shell, text: &str, by: By) -> Result<Domain, CmdError> {
    let conn = sh.conn().await?;
    let mut last = None;
    if by.id
        && let Ok(id) = text.parse::<i32>()
        && id >= 0
    {
        match conn.lookup_domain_by_id(id).await {
            Ok(d) => return Ok(d),
            Err(e) => last = Some(e),
        }
    }
    if by.uuid && text.len() == 36 {
        match conn.lookup_domain_by_uuid(text).await {
            Ok(d) => return Ok(d),
            Err(e) => last = Some(e),
        }
    }
    if by.name {
        match conn.lookup_domain_by_name(text).await {
            Ok(d) => return Ok(d),
            Err(e) => last = Some(e),
        }
    }
    let context = format!("failed to get domain '{text}'");
    Err(match last {
        Some(e) => CmdError::with(context, e),
        None => CmdError::msg(context),
    })
}

async fn arg_domain(sh: &mut Shell, args: &Args) -> Result<Domain, CmdError> {
    lookup(sh, args.req("domain"), ANY).await
}

pub(crate) async fn list(sh: &mut Shell, args: &Args) -> CmdResult {
    use DomainListFlag as F;
    exclusive(args, "table", "name")?;
    exclusive(args, "table", "uuid")?;
    exclusive(args, "table", "id")?;
    let mut flags = F::Active as u32;
    if args.flag("inactive") || args.flag("state-shutoff") {
        flags = F::Inactive as u32;
    }
    if args.flag("all") {
        flags = F::Active as u32 | F::Inactive as u32;
    }
    for (name, flag) in [
        ("persistent", F::Persistent),
        ("transient", F::Transient),
        ("with-managed-save", F::Managedsave),
        ("without-managed-save", F::NoManagedsave),
        ("autostart", F::Autostart),
        ("no-autostart", F::NoAutostart),
        ("with-snapshot", F::HasSnapshot),
        ("without-snapshot", F::NoSnapshot),
        ("with-checkpoint", F::HasCheckpoint),
        ("without-checkpoint", F::NoCheckpoint),
        ("state-running", F::Running),
        ("state-paused", F::Paused),
        ("state-shutoff", F::Shutoff),
        ("state-other", F::Other),
    ] {
        if args.flag(name) {
            flags |= flag as u32;
        }
    }
    let conn = sh.conn().await?;
    let domains = conn
        .list_all_domains(flags)
        .await
        .map_err(|e| CmdError::with("Failed to list domains", e))?;
    let mut rows: Vec<format::DomainRow> = domains
        .iter()
        .map(|d| {
            let s = d.summary();
            format::DomainRow {
                id: d.id(),
                name: s.name.clone(),
                uuid: s.uuid.clone(),
                state: s.state(),
                title: s.title.clone(),
                saved: args.flag("managed-save") && s.state() == DomainState::Shutoff && s.has_managed_save,
            }
        })
        .collect();
    format::sort_domains(&mut rows);
    let shape = format::ListShape {
        uuid: args.flag("uuid"),
        name: args.flag("name"),
        id: args.flag("id"),
        title: args.flag("title"),
        header: !sh.quiet,
    };
    let text = format::domain_list(&rows, shape);
    sh.print(&text);
    Ok(())
}

pub(crate) async fn define(sh: &mut Shell, args: &Args) -> CmdResult {
    let file = args.req("file");
    let xml = read_file(file)?;
    let flags = if args.flag("validate") {
        DomainDefineFlag::Validate as u32
    } else {
        0
    };
    let conn = sh.conn().await?;
    let dom = conn
        .define_domain_xml(&xml, flags)
        .await
        .map_err(|e| CmdError::with(format!("Failed to define domain from {file}"), e))?;
    sh.print_extra(&format!("Domain '{}' defined from {file}\n", dom.name()));
    Ok(())
}

pub(crate) async fn create(sh: &mut Shell, args: &Args) -> CmdResult {
    let file = args.req("file");
    let xml = read_file(file)?;
    let mut flags = 0;
    if args.flag("paused") {
        flags |= DomainCreateFlag::StartPaused as u32;
    }
    if args.flag("autodestroy") {
        flags |= DomainCreateFlag::StartAutodestroy as u32;
    }
    if args.flag("validate") {
        flags |= DomainCreateFlag::StartValidate as u32;
    }
    let conn = sh.conn().await?;
    let dom = conn
        .create_domain_xml(&xml, flags)
        .await
        .map_err(|e| CmdError::with(format!("Failed to create domain from {file}"), e))?;
    sh.print_extra(&format!("Domain '{}' created from {file}\n", dom.name()));
    if args.flag("console") {
        return open_console(sh, &dom).await;
    }
    Ok(())
}

pub(crate) async fn start(sh: &mut Shell, args: &Args) -> CmdResult {
    let mut dom = lookup(
        sh,
        args.req("domain"),
        By {
            id: false,
            uuid: true,
            name: true,
        },
    )
    .await?;
    if dom.id().is_some() {
        return Err(CmdError::msg("Domain is already active"));
    }
    let mut flags = 0;
    for (name, flag) in [
        ("paused", DomainCreateFlag::StartPaused),
        ("autodestroy", DomainCreateFlag::StartAutodestroy),
        ("bypass-cache", DomainCreateFlag::StartBypassCache),
        ("force-boot", DomainCreateFlag::StartForceBoot),
        ("reset-nvram", DomainCreateFlag::StartResetNvram),
    ] {
        if args.flag(name) {
            flags |= flag as u32;
        }
    }
    let name = dom.name().to_owned();
    dom.create(flags)
        .await
        .map_err(|e| CmdError::with(format!("Failed to start domain '{name}'"), e))?;
    sh.print_extra(&format!("Domain '{name}' started\n"));
    if args.flag("console") {
        return open_console(sh, &dom).await;
    }
    Ok(())
}

fn mode_flags(mode: Option<&str>) -> Result<u32, CmdError> {
    let Some(mode) = mode else { return Ok(0) };
    let mut flags = 0;
    for m in mode.split(',') {
        flags |= match m {
            "acpi" => 1,
            "agent" => 2,
            "initctl" => 4,
            "signal" => 8,
            "paravirt" => 16,
            other => {
                return Err(CmdError::msg(format!(
                    "Unknown mode {other} value, expecting 'acpi', 'agent', 'initctl', 'signal' or 'paravirt'"
                )));
            }
        };
    }
    Ok(flags)
}

pub(crate) async fn lifecycle(sh: &mut Shell, args: &Args, command: &str) -> CmdResult {
    let given = args.req("domain").to_owned();
    let dom = arg_domain(sh, args).await?;
    let (result, done, failed) = match command {
        "destroy" => {
            let mut flags = 0;
            if args.flag("graceful") {
                flags |= DomainDestroyFlag::Graceful as u32;
            }
            if args.flag("remove-logs") {
                flags |= DomainDestroyFlag::RemoveLogs as u32;
            }
            (dom.destroy(flags).await, "destroyed", "destroy")
        }
        "shutdown" => {
            let flags = mode_flags(args.get("mode"))?;
            (dom.shutdown(flags).await, "is being shutdown", "shutdown")
        }
        "reboot" => {
            let flags = mode_flags(args.get("mode"))?;
            (dom.reboot(flags).await, "is being rebooted", "reboot")
        }
        "reset" => (dom.reset().await, "was reset", "reset"),
        "suspend" => (dom.suspend().await, "suspended", "suspend"),
        _ => (dom.resume().await, "resumed", "resume"),
    };
    result.map_err(|e| CmdError::with(format!("Failed to {failed} domain '{given}'"), e))?;
    sh.print_extra(&format!("Domain '{given}' {done}\n"));
    Ok(())
}

pub(crate) async fn undefine(sh: &mut Shell, args: &Args) -> CmdResult {
    let given = args.req("domain").to_owned();
    let dom = arg_domain(sh, args).await?;
    let mut flags = 0;
    for (name, flag) in [
        ("managed-save", DomainUndefineFlag::ManagedSave),
        ("snapshots-metadata", DomainUndefineFlag::SnapshotsMetadata),
        ("checkpoints-metadata", DomainUndefineFlag::CheckpointsMetadata),
        ("nvram", DomainUndefineFlag::Nvram),
        ("keep-nvram", DomainUndefineFlag::KeepNvram),
        ("tpm", DomainUndefineFlag::Tpm),
        ("keep-tpm", DomainUndefineFlag::KeepTpm),
    ] {
        if args.flag(name) {
            flags |= flag as u32;
        }
    }
    dom.undefine(flags)
        .await
        .map_err(|e| CmdError::with(format!("Failed to undefine domain '{given}'"), e))?;
    sh.print_extra(&format!("Domain '{given}' has been undefined\n"));
    Ok(())
}

pub(crate) async fn dumpxml(sh: &mut Shell, args: &Args) -> CmdResult {
    let dom = arg_domain(sh, args).await?;
    let mut flags = 0;
    for (name, flag) in [
        ("inactive", DomainXmlFlag::Inactive),
        ("security-info", DomainXmlFlag::Secure),
        ("update-cpu", DomainXmlFlag::UpdateCpu),
        ("migratable", DomainXmlFlag::Migratable),
    ] {
        if args.flag(name) {
            flags |= flag as u32;
        }
    }
    let xml = dom.xml_desc(flags).await?;
    sh.print(&with_newline(xml));
    Ok(())
}

/// XML as virsh prints it: ending with one newline.
pub(crate) fn with_newline(mut xml: String) -> String {
    if !xml.ends_with('\n') {
        xml.push('\n');
    }
    xml
}

/// The `<os><type>` of a domain XML, what `virDomainGetOSType` reports.
fn os_type(xml: &str) -> Option<String> {
    let os = xml.find("<os>").or_else(|| xml.find("<os "))?;
    let rest = &xml[os..];
    let end_os = rest.find("</os>").unwrap_or(rest.len());
    let section = &rest[..end_os];
    let start = section.find("<type")?;
    let after = &section[start..];
    let open_end = after.find('>')?;
    let body = &after[open_end + 1..];
    let close = body.find("</type>")?;
    Some(body[..close].trim().to_owned())
}

pub(crate) async fn dominfo(sh: &mut Shell, args: &Args) -> CmdResult {
    let dom = arg_domain(sh, args).await?;
    let info = dom.info().await?;
    let xml = dom.xml_desc(0).await.unwrap_or_default();
    let autostart = dom.autostart().await.ok();
    let s = dom.summary();
    let text = format::dominfo(&format::DomInfo {
        id: dom.id(),
        name: s.name.clone(),
        uuid: s.uuid.clone(),
        os_type: os_type(&xml),
        state: info.state(),
        vcpus: info.nr_virt_cpu,
        cpu_time_ns: info.cpu_time_ns,
        max_memory_kib: info.max_memory_kib,
        memory_kib: info.memory_kib,
        persistent: s.persistent,
        autostart,
        managed_save: s.has_managed_save,
    });
    sh.print(&text);
    Ok(())
}

/// libvirt's reason number of a state reason.
pub(crate) fn reason_number(reason: Option<&DomainStateReason>) -> i32 {
    use domain_state_reason::Reason;
    match reason.and_then(|r| r.reason) {
        Some(
            Reason::Nostate(n)
            | Reason::Running(n)
            | Reason::Blocked(n)
            | Reason::Paused(n)
            | Reason::Shutdown(n)
            | Reason::Shutoff(n)
            | Reason::Crashed(n)
            | Reason::Pmsuspended(n),
        ) => n,
        None => 0,
    }
}

pub(crate) async fn domstate(sh: &mut Shell, args: &Args) -> CmdResult {
    let dom = arg_domain(sh, args).await?;
    let state = dom.state().await?;
    let text = format::domstate(
        state.state(),
        reason_number(state.reason.as_ref()),
        args.flag("reason"),
    );
    sh.print(&text);
    Ok(())
}

pub(crate) async fn ids(sh: &mut Shell, args: &Args, command: &str) -> CmdResult {
    let by = match command {
        "domid" => By {
            id: false,
            uuid: true,
            name: true,
        },
        "domname" => By {
            id: true,
            uuid: true,
            name: false,
        },
        _ => By {
            id: true,
            uuid: false,
            name: true,
        },
    };
    let dom = lookup(sh, args.req("domain"), by).await?;
    let text = match command {
        "domid" => dom.id().map_or("-".to_owned(), |id| id.to_string()),
        "domname" => dom.name().to_owned(),
        _ => dom.uuid().to_owned(),
    };
    sh.print(&format!("{text}\n"));
    Ok(())
}

pub(crate) async fn autostart(sh: &mut Shell, args: &Args) -> CmdResult {
    let given = args.req("domain").to_owned();
    let dom = arg_domain(sh, args).await?;
    let enable = !args.flag("disable");
    dom.set_autostart(enable).await.map_err(|e| {
        let verb = if enable { "mark" } else { "unmark" };
        CmdError::with(format!("Failed to {verb} domain '{given}' as autostarted"), e)
    })?;
    let verb = if enable { "marked" } else { "unmarked" };
    sh.print_extra(&format!("Domain '{given}' {verb} as autostarted\n"));
    Ok(())
}

pub(crate) async fn domrename(sh: &mut Shell, args: &Args) -> CmdResult {
    let dom = arg_domain(sh, args).await?;
    dom.rename(args.req("new-name"))
        .await
        .map_err(|e| CmdError::with("Failed to rename domain", e))?;
    sh.print_extra("Domain successfully renamed\n");
    Ok(())
}

pub(crate) async fn desc(sh: &mut Shell, args: &Args) -> CmdResult {
    let flags = affect_flags(args)?;
    if args.flag("edit") {
        return Err(CmdError::msg(
            "--edit is not supported: give the new text with --new-desc",
        ));
    }
    let title = args.flag("title");
    let (kind, what) = if title {
        (DomainMetadataType::Title, "title")
    } else {
        (DomainMetadataType::Description, "description")
    };
    let dom = arg_domain(sh, args).await?;
    if let Some(text) = args.get("new-desc") {
        let value = (!text.is_empty()).then_some(text);
        dom.set_metadata(kind, value, "", "", flags)
            .await
            .map_err(|e| CmdError::with(format!("Failed to set new domain {what}"), e))?;
        sh.print_extra(&format!("Domain {what} updated successfully\n"));
        return Ok(());
    }
    match dom.metadata(kind, "", flags).await {
        Ok(text) => {
            sh.print(&format!("{text}\n"));
            Ok(())
        }
        Err(e) if e.code == ErrorCode::NoDomainMetadata => {
            sh.print(&format!("No {what} for domain: {}\n", args.req("domain")));
            Ok(())
        }
        Err(e) => Err(CmdError::from(e)),
    }
}

pub(crate) async fn metadata(sh: &mut Shell, args: &Args) -> CmdResult {
    let flags = affect_flags(args)?;
    if args.flag("edit") {
        return Err(CmdError::msg(
            "--edit is not supported: give the new element with --set",
        ));
    }
    let uri = args.req("uri");
    let dom = arg_domain(sh, args).await?;
    if args.flag("remove") || args.get("set").is_some() {
        let set = if args.flag("remove") {
            None
        } else {
            args.get("set")
        };
        let key = args.get("key").unwrap_or_default();
        if set.is_some() && key.is_empty() {
            return Err(CmdError::msg("namespace key is required when modifying metadata"));
        }
        dom.set_metadata(DomainMetadataType::Element, set, key, uri, flags)
            .await?;
        sh.print_extra(if set.is_some() {
            "Metadata modified\n"
        } else {
            "Metadata removed\n"
        });
        return Ok(());
    }
    let element = dom.metadata(DomainMetadataType::Element, uri, flags).await?;
    sh.print(&format!("{element}\n"));
    Ok(())
}

pub(crate) async fn setmem(sh: &mut Shell, args: &Args, maximum: bool) -> CmdResult {
    let mut flags = affect_flags(args)?;
    if maximum {
        flags |= DomainMemFlag::Maximum as u32;
    }
    let size = args.req("size");
    let bytes = scaled_size(size, 1024).ok_or_else(|| {
        CmdError::msg(format!(
            "Scaled numeric value '{size}' for <size> option is malformed or out of range"
        ))
    })?;
    let dom = arg_domain(sh, args).await?;
    let kib = bytes.div_ceil(1024);
    dom.set_memory(kib, flags).await.map_err(|e| {
        if maximum {
            CmdError::with("Unable to change MaxMemorySize", e)
        } else {
            CmdError::from(e)
        }
    })
}

pub(crate) async fn setvcpus(sh: &mut Shell, args: &Args) -> CmdResult {
    let mut flags = affect_flags(args)?;
    for (name, flag) in [
        ("maximum", DomainVcpuFlag::Maximum),
        ("guest", DomainVcpuFlag::Guest),
        ("hotpluggable", DomainVcpuFlag::Hotpluggable),
    ] {
        if args.flag(name) {
            flags |= flag as u32;
        }
    }
    let count_text = args.req("count");
    let count: u32 = count_text.parse().map_err(|_| {
        CmdError::msg(format!(
            "Numeric value '{count_text}' for <count> option is malformed or out of range"
        ))
    })?;
    let dom = arg_domain(sh, args).await?;
    dom.set_vcpus(count, flags).await?;
    Ok(())
}

pub(crate) async fn device(sh: &mut Shell, args: &Args, attach: bool) -> CmdResult {
    let mut flags = affect_flags(args)?;
    let dom = arg_domain(sh, args).await?;
    if args.flag("persistent") && dom.id().is_some() {
        flags |= 1;
    }
    let file = args.req("file");
    let xml = read_file(file)?;
    let result = if attach {
        dom.attach_device(&xml, flags).await
    } else {
        dom.detach_device(&xml, flags).await
    };
    let verb = if attach { "attach" } else { "detach" };
    result.map_err(|e| CmdError::with(format!("Failed to {verb} device from {file}"), e))?;
    sh.print_extra(&format!("Device {verb}ed successfully\n"));
    Ok(())
}

/// Escapes `value` for an XML attribute in single quotes.
fn attr_escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The affect flags of a device command, `--persistent` adding CONFIG to a running domain's
/// change as virsh does.
fn device_flags(args: &Args, dom: &Domain) -> Result<u32, CmdError> {
    let mut flags = affect_flags(args)?;
    if args.flag("persistent") {
        flags |= DomainDeviceModifyFlag::Config as u32;
        if dom.id().is_some() {
            flags |= DomainDeviceModifyFlag::Live as u32;
        }
    }
    Ok(flags)
}

/// The domain's XML, inactive for a change to the definition only.
async fn device_source_xml(dom: &Domain, flags: u32) -> Result<String, CmdError> {
    let live = flags & DomainDeviceModifyFlag::Live as u32 != 0
        || (flags & DomainDeviceModifyFlag::Config as u32 == 0 && dom.id().is_some());
    let xml_flags = if live { 0 } else { DomainXmlFlag::Inactive as u32 };
    Ok(dom.xml_desc(xml_flags).await?)
}

/// virsh's `attach-disk`: a `<disk>` element from the options.
pub(crate) fn disk_xml(args: &Args) -> Result<String, CmdError> {
    let source = args.req("source");
    let target = args.req("target");
    let device = args.get("type").unwrap_or("disk");
    if !matches!(device, "disk" | "cdrom" | "floppy" | "lun") {
        return Err(CmdError::msg(format!("Unknown disk type '{device}'")));
    }
    let source_type = match args.get("sourcetype") {
        Some(t @ ("file" | "block")) => t,
        Some(other) => return Err(CmdError::msg(format!("Unknown source type: '{other}'"))),
        None => {
            use std::os::unix::fs::FileTypeExt as _;
            let block = std::fs::metadata(source).is_ok_and(|m| m.file_type().is_block_device());
            if block { "block" } else { "file" }
        }
    };
    let mut xml = format!("<disk type='{source_type}' device='{device}'>");
    if args.get("driver").is_some() || args.get("subdriver").is_some() || args.get("cache").is_some() {
        xml.push_str("<driver");
        for (attr, opt) in [("name", "driver"), ("type", "subdriver"), ("cache", "cache")] {
            if let Some(v) = args.get(opt) {
                xml.push_str(&format!(" {attr}='{}'", attr_escape(v)));
            }
        }
        xml.push_str("/>");
    }
    let source_attr = if source_type == "block" { "dev" } else { "file" };
    xml.push_str(&format!("<source {source_attr}='{}'/>", attr_escape(source)));
    xml.push_str(&format!("<target dev='{}'", attr_escape(target)));
    if let Some(bus) = args.get("targetbus") {
        xml.push_str(&format!(" bus='{}'", attr_escape(bus)));
    }
    xml.push_str("/>");
    match args.get("mode") {
        Some("readonly") => xml.push_str("<readonly/>"),
        Some("shareable") => xml.push_str("<shareable/>"),
        Some(other) => {
            return Err(CmdError::msg(format!(
                "No support for {other} in command 'attach-disk'"
            )));
        }
        None => {}
    }
    if let Some(serial) = args.get("serial") {
        xml.push_str(&format!("<serial>{}</serial>", attr_escape(serial)));
    }
    xml.push_str("</disk>");
    Ok(xml)
}

/// Attaches the device element `xml` that `attach-disk` or `attach-interface` built (or, with
/// `--print-xml`, prints it); `what` is `Disk` or `Interface`.
async fn attach_built(sh: &mut Shell, args: &Args, xml: &str, what: &str) -> CmdResult {
    if args.flag("print-xml") {
        sh.print(&format!("{xml}\n"));
        return Ok(());
    }
    let dom = arg_domain(sh, args).await?;
    let flags = device_flags(args, &dom)?;
    dom.attach_device(xml, flags)
        .await
        .map_err(|e| CmdError::with(format!("Failed to attach {}", what.to_lowercase()), e))?;
    sh.print_extra(&format!("{what} attached successfully\n"));
    Ok(())
}

pub(crate) async fn attach_disk(sh: &mut Shell, args: &Args) -> CmdResult {
    let xml = disk_xml(args)?;
    attach_built(sh, args, &xml, "Disk").await
}

pub(crate) async fn detach_disk(sh: &mut Shell, args: &Args) -> CmdResult {
    let target = args.req("target");
    let dom = arg_domain(sh, args).await?;
    let flags = device_flags(args, &dom)?;
    let xml = device_source_xml(&dom, flags).await?;
    let disk = crate::devxml::devices(&xml)
        .into_iter()
        .find(|d| d.name == "disk" && d.child_attr("target", "dev") == Some(target))
        .ok_or_else(|| CmdError::msg(format!("No disk found whose source path or target is {target}")))?;
    if args.flag("print-xml") {
        sh.print(&format!("{}\n", disk.xml));
        return Ok(());
    }
    dom.detach_device(&disk.xml, flags)
        .await
        .map_err(|e| CmdError::with("Failed to detach disk", e))?;
    sh.print_extra("Disk detached successfully\n");
    Ok(())
}

/// virsh's `change-media`: the CD-ROM named by target or source path gets a new medium
/// (`--insert`, `--update`) or none (`--eject`), through UpdateDomainDevice.
pub(crate) async fn change_media(sh: &mut Shell, args: &Args) -> CmdResult {
    let actions = ["eject", "insert", "update"]
        .into_iter()
        .filter(|a| args.flag(a))
        .collect::<Vec<_>>();
    let action = match actions.as_slice() {
        [] => "update",
        [one] => *one,
        _ => {
            return Err(CmdError::msg(
                "Options --eject, --insert and --update are mutually exclusive",
            ));
        }
    };
    let source = args.get("source");
    if action != "eject" && source.is_none() {
        return Err(CmdError::msg(format!(
            "No source is specified for {action} media"
        )));
    }
    let path = args.req("path");
    let dom = arg_domain(sh, args).await?;
    let mut flags = affect_flags(args)?;
    if args.flag("force") {
        flags |= DomainDeviceModifyFlag::Force as u32;
    }
    let xml = device_source_xml(&dom, flags).await?;
    let drive = crate::devxml::devices(&xml)
        .into_iter()
        .find(|d| {
            d.name == "disk"
                && (d.child_attr("target", "dev") == Some(path)
                    || d.child_attr("source", "file") == Some(path)
                    || d.child_attr("source", "dev") == Some(path))
        })
        .ok_or_else(|| CmdError::msg(format!("No disk found whose source path or target is {path}")))?;
    let device = drive.attr("device").unwrap_or("disk");
    if device != "cdrom" && device != "floppy" {
        return Err(CmdError::msg(format!(
            "The disk device '{path}' is not removable"
        )));
    }
    let target = drive.child_attr("target", "dev").unwrap_or_default();
    let mut disk = format!("<disk type='file' device='{device}'>");
    if let Some(format) = drive.child_attr("driver", "type") {
        disk.push_str(&format!("<driver name='qemu' type='{}'/>", attr_escape(format)));
    }
    if action != "eject"
        && let Some(source) = source
    {
        disk.push_str(&format!("<source file='{}'/>", attr_escape(source)));
    }
    disk.push_str(&format!("<target dev='{}'", attr_escape(target)));
    if let Some(bus) = drive.child_attr("target", "bus") {
        disk.push_str(&format!(" bus='{}'", attr_escape(bus)));
    }
    disk.push_str("/><readonly/></disk>");
    if args.flag("print-xml") {
        sh.print(&format!("{disk}\n"));
        return Ok(());
    }
    let (failed, done) = match action {
        "eject" => (
            "Failed to complete action eject on media",
            "Successfully ejected media.",
        ),
        "insert" => (
            "Failed to complete action insert on media",
            "Successfully inserted media.",
        ),
        _ => (
            "Failed to complete action update on media",
            "Successfully updated media.",
        ),
    };
    dom.update_device(&disk, flags)
        .await
        .map_err(|e| CmdError::with(failed, e))?;
    sh.print_extra(&format!("{done}\n"));
    Ok(())
}

/// virsh's `attach-interface`: an `<interface>` element from the options.
pub(crate) fn interface_xml(args: &Args) -> Result<String, CmdError> {
    let kind = args.req("type");
    let source = args.get("source");
    let source_xml = match (kind, source) {
        ("network", Some(s)) => format!("<source network='{}'/>", attr_escape(s)),
        ("bridge", Some(s)) => format!("<source bridge='{}'/>", attr_escape(s)),
        ("user", _) => String::new(),
        ("network" | "bridge", None) => {
            return Err(CmdError::msg(format!(
                "a source is required for an interface of type '{kind}'"
            )));
        }
        (other, _) => {
            return Err(CmdError::msg(format!(
                "No support for {other} in command 'attach-interface'"
            )));
        }
    };
    let mut xml = format!("<interface type='{kind}'>{source_xml}");
    if let Some(mac) = args.get("mac") {
        xml.push_str(&format!("<mac address='{}'/>", attr_escape(mac)));
    }
    if let Some(target) = args.get("target") {
        xml.push_str(&format!("<target dev='{}'/>", attr_escape(target)));
    }
    if let Some(model) = args.get("model") {
        xml.push_str(&format!("<model type='{}'/>", attr_escape(model)));
    }
    xml.push_str("</interface>");
    Ok(xml)
}

pub(crate) async fn attach_interface(sh: &mut Shell, args: &Args) -> CmdResult {
    let xml = interface_xml(args)?;
    attach_built(sh, args, &xml, "Interface").await
}

pub(crate) async fn detach_interface(sh: &mut Shell, args: &Args) -> CmdResult {
    let kind = args.req("type");
    let mac = args.get("mac");
    let dom = arg_domain(sh, args).await?;
    let flags = device_flags(args, &dom)?;
    let xml = device_source_xml(&dom, flags).await?;
    let matching: Vec<_> = crate::devxml::devices(&xml)
        .into_iter()
        .filter(|d| d.name == "interface" && d.attr("type") == Some(kind))
        .filter(|d| {
            mac.is_none_or(|m| {
                d.child_attr("mac", "address")
                    .is_some_and(|a| a.eq_ignore_ascii_case(m))
            })
        })
        .collect();
    let net = match matching.as_slice() {
        [one] => one,
        [] => {
            return Err(CmdError::msg(match mac {
                Some(mac) => format!("No interface found whose type is {kind} and MAC address is {mac}"),
                None => format!("No interface found whose type is {kind}"),
            }));
        }
        more => {
            return Err(CmdError::msg(format!(
                "Domain has {} interfaces. Please specify which one to detach using --mac",
                more.len()
            )));
        }
    };
    dom.detach_device(&net.xml, flags)
        .await
        .map_err(|e| CmdError::with("Failed to detach interface", e))?;
    sh.print_extra("Interface detached successfully\n");
    Ok(())
}

pub(crate) async fn console(sh: &mut Shell, args: &Args) -> CmdResult {
    let dom = arg_domain(sh, args).await?;
    let mut flags = 0;
    if args.flag("force") {
        flags |= DomainConsoleFlag::Force as u32;
    }
    if args.flag("safe") {
        flags |= DomainConsoleFlag::Safe as u32;
    }
    super::console::run(sh, &dom, args.get("devname").unwrap_or_default(), flags).await
}

/// `--console` after `start` or `create`.
async fn open_console(sh: &mut Shell, dom: &Domain) -> CmdResult {
    super::console::run(sh, dom, "", 0).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_type_reads_the_os_section() {
        let xml = "<domain type='test'><name>t</name><os>\n  <type arch='i686'>hvm</type>\n</os></domain>";
        assert_eq!(os_type(xml).as_deref(), Some("hvm"));
        assert_eq!(os_type("<domain type='kvm'><name>x</name></domain>"), None);
    }

    #[test]
    fn shutdown_modes_map_to_flags() {
        assert_eq!(mode_flags(Some("acpi,agent")).expect("modes"), 3);
        assert_eq!(mode_flags(None).expect("none"), 0);
        assert!(mode_flags(Some("poke")).is_err());
    }
}
