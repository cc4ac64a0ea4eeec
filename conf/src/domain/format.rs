//! Writing a definition as XML, the way libvirt writes it: two-space indentation, attributes in
//! single quotes and in libvirt's order, elements in libvirt's order (devices in document
//! order), `<metadata>` content exactly as it was given.

use std::fmt::Write as _;

use super::model::*;

/// What to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mode {
    /// The persistent configuration: no id, no automatic aliases, no runtime paths or ports.
    pub inactive: bool,
}

/// Attributes being collected for one element.
#[derive(Default)]
struct Attrs(Vec<(&'static str, String)>);

impl Attrs {
    fn add(&mut self, name: &'static str, value: impl ToString) -> &mut Self {
        self.0.push((name, value.to_string()));
        self
    }

    fn opt(&mut self, name: &'static str, value: Option<impl ToString>) -> &mut Self {
        if let Some(v) = value {
            self.0.push((name, v.to_string()));
        }
        self
    }
}

fn escape_into(out: &mut String, text: &str, attribute: bool) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' if attribute => out.push_str("&apos;"),
            '"' if attribute => out.push_str("&quot;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attribute => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

struct W {
    out: String,
    depth: usize,
}

impl W {
    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }

    fn open_tag(&mut self, name: &str, attrs: &Attrs) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in &attrs.0 {
            self.out.push(' ');
            self.out.push_str(k);
            self.out.push_str("='");
            escape_into(&mut self.out, v, true);
            self.out.push('\'');
        }
    }

    /// `<name attrs/>`.
    fn leaf(&mut self, name: &str, attrs: &Attrs) {
        self.open_tag(name, attrs);
        self.out.push_str("/>\n");
    }

    /// `<name attrs>text</name>`.
    fn text(&mut self, name: &str, attrs: &Attrs, text: &str) {
        self.open_tag(name, attrs);
        self.out.push('>');
        escape_into(&mut self.out, text, false);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    /// `<name attrs>` children `</name>`, or `<name attrs/>` when `children` writes nothing.
    fn elem(&mut self, name: &str, attrs: &Attrs, children: impl FnOnce(&mut W)) {
        self.open_tag(name, attrs);
        self.out.push_str(">\n");
        let mark = self.out.len();
        self.depth += 1;
        children(self);
        self.depth -= 1;
        if self.out.len() == mark {
            self.out.truncate(mark - 2);
            self.out.push_str("/>\n");
        } else {
            self.indent();
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push_str(">\n");
        }
    }
}

fn a() -> Attrs {
    Attrs::default()
}

fn yes_no(v: bool) -> &'static str {
    if v { "yes" } else { "no" }
}

fn on_off(v: bool) -> &'static str {
    if v { "on" } else { "off" }
}

/// Formats `def`.
pub(crate) fn format(def: &DomainDef, mode: Mode) -> String {
    let mut w = W {
        out: String::with_capacity(4096),
        depth: 0,
    };
    w.out.push_str("<domain type='");
    w.out.push_str(def.virt_type.as_str());
    w.out.push('\'');
    if !mode.inactive
        && let Some(id) = def.id
    {
        let _ = write!(w.out, " id='{id}'");
    }
    for (prefix, uri) in &def.namespaces {
        let _ = write!(w.out, " xmlns:{prefix}='");
        escape_into(&mut w.out, uri, true);
        w.out.push('\'');
    }
    w.out.push_str(">\n");
    w.depth = 1;
    body(&mut w, def, mode);
    w.depth = 0;
    w.out.push_str("</domain>\n");
    w.out
}

fn body(w: &mut W, def: &DomainDef, mode: Mode) {
    w.text("name", &a(), &def.name);
    w.text("uuid", &a(), &def.uuid);
    if let Some(t) = &def.title {
        w.text("title", &a(), t);
    }
    if let Some(d) = &def.description {
        w.text("description", &a(), d);
    }
    if let Some(raw) = &def.metadata {
        w.indent();
        w.out.push_str("<metadata>");
        w.out.push_str(raw);
        w.out.push_str("</metadata>\n");
    }
    if let Some(max) = &def.memory.max {
        w.text(
            "maxMemory",
            a().add("slots", max.slots).add("unit", "KiB"),
            &max.kib.to_string(),
        );
    }
    w.text(
        "memory",
        a().add("unit", "KiB"),
        &def.memory.total_kib.to_string(),
    );
    w.text(
        "currentMemory",
        a().add("unit", "KiB"),
        &def.memory.current_kib.to_string(),
    );
    let mut vcpu = a();
    vcpu.add(
        "placement",
        if def.vcpu.placement_auto { "auto" } else { "static" },
    );
    vcpu.opt("cpuset", def.vcpu.cpuset.as_ref());
    if let Some(c) = def.vcpu.current
        && c != def.vcpu.count
    {
        vcpu.add("current", c);
    }
    w.text("vcpu", &vcpu, &def.vcpu.count.to_string());
    os(w, &def.os);
    let f = &def.features;
    if f.acpi || f.apic || f.pae {
        w.elem("features", &a(), |w| {
            if f.acpi {
                w.leaf("acpi", &a());
            }
            if f.apic {
                w.leaf("apic", &a());
            }
            if f.pae {
                w.leaf("pae", &a());
            }
        });
    }
    if let Some(cpu) = &def.cpu {
        let mut attrs = a();
        attrs.add("mode", cpu.mode);
        if cpu.mode == CpuMode::Custom {
            attrs.opt("match", cpu.match_);
        }
        attrs.opt("check", cpu.check);
        attrs.opt("migratable", cpu.migratable.map(on_off));
        w.elem("cpu", &attrs, |w| {
            if cpu.mode == CpuMode::Custom
                && let Some(model) = &cpu.model
                && let Some(name) = &model.name
            {
                w.text(
                    "model",
                    a().add("fallback", model.fallback.unwrap_or(CpuFallback::Allow)),
                    name,
                );
            }
        });
    }
    clock(w, &def.clock);
    w.text("on_poweroff", &a(), def.on_poweroff.as_str());
    w.text("on_reboot", &a(), def.on_reboot.as_str());
    w.text("on_crash", &a(), def.on_crash.as_str());
    devices(w, def, mode);
}

fn os(w: &mut W, os: &Os) {
    w.elem("os", &a(), |w| {
        let mut t = a();
        t.opt("arch", os.arch.as_ref());
        t.opt("machine", os.machine.as_ref());
        w.text("type", &t, os.os_type.as_str());
        if let Some(l) = &os.loader {
            let mut attrs = a();
            attrs.opt("readonly", l.readonly.map(yes_no));
            attrs.opt("secure", l.secure.map(yes_no));
            attrs.opt("type", l.kind);
            match &l.path {
                Some(p) => w.text("loader", &attrs, p),
                None => w.leaf("loader", &attrs),
            }
        }
        if let Some(n) = &os.nvram {
            let mut attrs = a();
            attrs.opt("template", n.template.as_ref());
            match &n.path {
                Some(p) => w.text("nvram", &attrs, p),
                None => w.leaf("nvram", &attrs),
            }
        }
        if let Some(k) = &os.kernel {
            w.text("kernel", &a(), k);
        }
        if let Some(i) = &os.initrd {
            w.text("initrd", &a(), i);
        }
        if let Some(c) = &os.cmdline {
            w.text("cmdline", &a(), c);
        }
        for dev in &os.boot {
            w.leaf("boot", a().add("dev", dev));
        }
    });
}

fn clock(w: &mut W, clock: &Clock) {
    let mut attrs = a();
    match &clock.offset {
        ClockOffset::Utc => {
            attrs.add("offset", "utc");
        }
        ClockOffset::Localtime => {
            attrs.add("offset", "localtime");
        }
        ClockOffset::Variable { adjustment, basis } => {
            attrs
                .add("offset", "variable")
                .add("adjustment", adjustment)
                .add("basis", basis);
        }
        ClockOffset::Timezone(tz) => {
            attrs.add("offset", "timezone").add("timezone", tz);
        }
    }
    w.elem("clock", &attrs, |w| {
        for t in &clock.timers {
            let mut attrs = a();
            attrs
                .add("name", t.name)
                .opt("present", t.present.map(yes_no))
                .opt("tickpolicy", t.tickpolicy)
                .opt("track", t.track);
            w.leaf("timer", &attrs);
        }
    });
}

fn devices(w: &mut W, def: &DomainDef, mode: Mode) {
    // The first serial-type console is written as an alias of the first serial port.
    let first_serial = def.devices.serials().next();
    w.elem("devices", &a(), |w| {
        if let Some(e) = &def.devices.emulator {
            w.text("emulator", &a(), e);
        }
        let mut console_seen = false;
        for device in &def.devices.list {
            match device {
                Device::Disk(d) => disk(w, d, mode),
                Device::Controller(c) => controller(w, c, mode),
                Device::Interface(i) => interface(w, i, mode),
                Device::Serial(c) => chardev(w, "serial", c, mode),
                Device::Console(c) => {
                    let alias = !console_seen
                        && c.console_type.is_none_or(|t| t == ConsoleTargetType::Serial)
                        && first_serial.is_some();
                    console_seen = true;
                    match (alias, first_serial) {
                        (true, Some(s)) => {
                            let mirrored = Chardev {
                                source: s.source.clone(),
                                port: s.port,
                                serial_type: None,
                                serial_model: None,
                                console_type: Some(ConsoleTargetType::Serial),
                                info: s.info.clone(),
                            };
                            chardev(w, "console", &mirrored, mode);
                        }
                        _ => chardev(w, "console", c, mode),
                    }
                }
                Device::Input(i) => {
                    let mut attrs = a();
                    attrs.add("type", i.input_type).opt("bus", i.bus);
                    w.elem("input", &attrs, |w| info(w, &i.info, mode));
                }
                Device::Graphics(g) => graphics(w, g, mode),
                Device::Audio(au) => w.leaf("audio", a().add("id", au.id).add("type", au.audio_type)),
                Device::Video(v) => video(w, v, mode),
                Device::Rng(r) => rng(w, r, mode),
                Device::Watchdog(wd) => {
                    let mut attrs = a();
                    attrs.add("model", wd.model).add("action", wd.action);
                    w.elem("watchdog", &attrs, |w| info(w, &wd.info, mode));
                }
                Device::Memballoon(m) => {
                    w.elem("memballoon", a().add("model", m.model), |w| {
                        if let Some(p) = m.stats_period {
                            w.leaf("stats", a().add("period", p));
                        }
                        info(w, &m.info, mode);
                    });
                }
            }
        }
    });
}

/// `<boot>`, `<alias>`, `<address>`.
fn info(w: &mut W, info: &DeviceInfo, mode: Mode) {
    if let Some(order) = info.boot_order {
        w.leaf("boot", a().add("order", order));
    }
    if let Some(alias) = &info.alias
        && (!mode.inactive || alias.starts_with("ua-"))
    {
        w.leaf("alias", a().add("name", alias));
    }
    if let Some(addr) = &info.address {
        address(w, addr);
    }
}

fn address(w: &mut W, addr: &Address) {
    let mut attrs = a();
    match addr {
        Address::Pci(p) => {
            attrs
                .add("type", "pci")
                .add("domain", format!("{:#06x}", p.domain))
                .add("bus", format!("{:#04x}", p.bus))
                .add("slot", format!("{:#04x}", p.slot))
                .add("function", format!("{:#x}", p.function))
                .opt("multifunction", p.multifunction.map(on_off));
        }
        Address::Drive(d) => {
            attrs
                .add("type", "drive")
                .add("controller", d.controller)
                .add("bus", d.bus)
                .add("target", d.target)
                .add("unit", d.unit);
        }
        Address::Usb(u) => {
            attrs
                .add("type", "usb")
                .add("bus", u.bus)
                .opt("port", u.port.as_ref());
        }
    }
    w.leaf("address", &attrs);
}

fn disk(w: &mut W, d: &Disk, mode: Mode) {
    let mut attrs = a();
    attrs.add("type", d.disk_type).add("device", d.device);
    w.elem("disk", &attrs, |w| {
        let dr = &d.driver;
        let mut drv = a();
        drv.opt("name", dr.name.as_ref())
            .opt("type", dr.format)
            .opt("cache", dr.cache)
            .opt("io", dr.io)
            .opt("discard", dr.discard);
        if !drv.0.is_empty() {
            w.leaf("driver", &drv);
        }
        if let Some(src) = &d.source {
            let mut s = a();
            match src {
                DiskSource::File(p) => {
                    s.add("file", p);
                }
                DiskSource::Block(p) => {
                    s.add("dev", p);
                }
                DiskSource::Volume { pool, volume } => {
                    s.add("pool", pool).add("volume", volume);
                }
            }
            match d.encryption.as_ref().filter(|e| e.in_source) {
                Some(e) => w.elem("source", &s, |w| encryption(w, e)),
                None => w.leaf("source", &s),
            }
        }
        let mut t = a();
        t.add("dev", &d.target).opt("bus", d.bus);
        w.leaf("target", &t);
        if d.readonly {
            w.leaf("readonly", &a());
        }
        if d.shareable {
            w.leaf("shareable", &a());
        }
        if let Some(e) = d
            .encryption
            .as_ref()
            .filter(|e| !e.in_source || d.source.is_none())
        {
            encryption(w, e);
        }
        info(w, &d.info, mode);
    });
}

fn encryption(w: &mut W, e: &DiskEncryption) {
    let mut attrs = a();
    attrs.add("format", e.format);
    w.elem("encryption", &attrs, |w| {
        let mut secret = a();
        secret.add("type", "passphrase");
        match &e.secret {
            EncryptionSecret::Uuid(uuid) => secret.add("uuid", uuid),
            EncryptionSecret::Usage(usage) => secret.add("usage", usage),
        };
        w.leaf("secret", &secret);
    });
}

fn controller(w: &mut W, c: &Controller, mode: Mode) {
    let mut attrs = a();
    attrs.add("type", c.kind()).add("index", c.index);
    match c.model {
        ControllerModel::Scsi(m) => {
            attrs.opt("model", m);
        }
        ControllerModel::Usb(m) => {
            attrs.opt("model", m);
        }
        ControllerModel::Pci(m) => {
            attrs.opt("model", m);
        }
        ControllerModel::Ide | ControllerModel::Sata => {}
    }
    w.elem("controller", &attrs, |w| {
        if let Some(name) = c.pci.model_name {
            w.leaf("model", a().add("name", name));
        }
        let mut t = a();
        t.opt("chassisNr", c.pci.chassis_nr)
            .opt("chassis", c.pci.chassis)
            .opt("port", c.pci.port.map(|p| format!("{p:#x}")))
            .opt("hotplug", c.pci.hotplug.map(on_off));
        if !t.0.is_empty() {
            w.leaf("target", &t);
        }
        info(w, &c.info, mode);
    });
}

fn interface(w: &mut W, i: &Interface, mode: Mode) {
    w.elem("interface", a().add("type", i.source.kind()), |w| {
        w.leaf("mac", a().add("address", &i.mac));
        match &i.source {
            InterfaceSource::User => {}
            InterfaceSource::Network(n) => w.leaf("source", a().add("network", n)),
            InterfaceSource::Bridge(b) => w.leaf("source", a().add("bridge", b)),
        }
        if let Some(dev) = &i.target_dev
            && !(mode.inactive && (dev.starts_with("vnet") || dev.starts_with("macvtap")))
        {
            w.leaf("target", a().add("dev", dev));
        }
        if let Some(m) = i.model {
            w.leaf("model", a().add("type", m));
        }
        info(w, &i.info, mode);
    });
}

fn chr_source(w: &mut W, source: &ChrSource, mode: Mode) {
    match source {
        ChrSource::Pty { path } => {
            if let Some(p) = path
                && !mode.inactive
            {
                w.leaf("source", a().add("path", p));
            }
        }
        ChrSource::File { path, append } => {
            w.leaf("source", a().add("path", path).opt("append", append.map(on_off)));
        }
        ChrSource::Unix { mode: m, path } => {
            w.leaf("source", a().add("mode", m).opt("path", path.as_ref()));
        }
        ChrSource::Tcp {
            mode: m,
            host,
            service,
            protocol,
        } => {
            w.leaf(
                "source",
                a().add("mode", m)
                    .opt("host", host.as_ref())
                    .add("service", service),
            );
            w.leaf("protocol", a().add("type", protocol));
        }
    }
}

fn chardev(w: &mut W, element: &str, c: &Chardev, mode: Mode) {
    let mut attrs = a();
    attrs.add("type", c.source.kind());
    if let ChrSource::Pty { path: Some(p) } = &c.source
        && !mode.inactive
    {
        attrs.add("tty", p);
    }
    w.elem(element, &attrs, |w| {
        chr_source(w, &c.source, mode);
        let mut t = a();
        if element == "console" {
            t.opt("type", c.console_type);
        } else {
            t.opt("type", c.serial_type);
        }
        t.opt("port", c.port);
        match c.serial_model {
            Some(m) if element == "serial" => {
                w.elem("target", &t, |w| w.leaf("model", a().add("name", m)));
            }
            _ if !t.0.is_empty() => w.leaf("target", &t),
            _ => {}
        }
        info(w, &c.info, mode);
    });
}

fn graphics(w: &mut W, g: &Graphics, mode: Mode) {
    let mut attrs = a();
    attrs.add("type", g.graphics_type);
    let live_port = g.port.filter(|_| !(g.autoport && mode.inactive));
    match g.graphics_type {
        GraphicsType::Vnc => {
            if let Some(Listen::Socket(Some(sock))) = &g.listen {
                attrs.add("socket", sock);
            } else if !matches!(g.listen, Some(Listen::Socket(None))) {
                match live_port {
                    Some(p) => {
                        attrs.add("port", p);
                    }
                    None if g.autoport => {
                        attrs.add("port", -1);
                    }
                    None => {}
                }
                attrs.add("autoport", yes_no(g.autoport));
            }
        }
        GraphicsType::Spice => {
            attrs.opt("port", live_port);
            if g.autoport {
                attrs.add("autoport", "yes");
            } else if live_port.is_some() {
                attrs.add("autoport", "no");
            }
        }
    }
    if let Some(Listen::Address(Some(addr))) = &g.listen {
        attrs.add("listen", addr);
    }
    w.elem("graphics", &attrs, |w| match &g.listen {
        None => {}
        Some(Listen::Address(addr)) => {
            w.leaf("listen", a().add("type", "address").opt("address", addr.as_ref()));
        }
        Some(Listen::Socket(sock)) => {
            w.leaf("listen", a().add("type", "socket").opt("socket", sock.as_ref()));
        }
        Some(Listen::None) => w.leaf("listen", a().add("type", "none")),
    });
}

fn video(w: &mut W, v: &Video, mode: Mode) {
    w.elem("video", &a(), |w| {
        let mut m = a();
        m.add("type", v.model)
            .opt("ram", v.ram)
            .opt("vram", v.vram)
            .opt("vgamem", v.vgamem)
            .opt("heads", v.heads);
        if v.primary {
            m.add("primary", "yes");
        }
        w.leaf("model", &m);
        info(w, &v.info, mode);
    });
}

fn rng(w: &mut W, r: &Rng, mode: Mode) {
    w.elem("rng", a().add("model", r.model), |w| {
        match &r.backend {
            RngBackend::Random(path) => match path {
                Some(p) => w.text("backend", a().add("model", "random"), p),
                None => w.leaf("backend", a().add("model", "random")),
            },
            RngBackend::Egd(source) => {
                let mut attrs = a();
                attrs.add("model", "egd").add("type", source.kind());
                w.elem("backend", &attrs, |w| chr_source(w, source, mode));
            }
        }
        info(w, &r.info, mode);
    });
}
