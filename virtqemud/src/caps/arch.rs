//! Architectures as libvirt names them, the QEMU target each maps to, and which guests a host
//! runs natively (under KVM).

/// One architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// libvirt's name (`x86_64`, `i686`, `aarch64`, ...).
    pub name: &'static str,
    /// QEMU's target name, as in `qemu-system-<target>` (`i386` for `i686`).
    pub qemu_target: &'static str,
    /// The guest word size in bits.
    pub wordsize: u32,
}

const fn arch(name: &'static str, qemu_target: &'static str, wordsize: u32) -> Arch {
    Arch {
        name,
        qemu_target,
        wordsize,
    }
}

/// Every architecture libvirt's capabilities schema knows, in libvirt's order.
pub const ARCHES: &[Arch] = &[
    arch("aarch64", "aarch64", 64),
    arch("alpha", "alpha", 64),
    arch("armv6l", "arm", 32),
    arch("armv7l", "arm", 32),
    arch("cris", "cris", 32),
    arch("i686", "i386", 32),
    arch("lm32", "lm32", 32),
    arch("loongarch64", "loongarch64", 64),
    arch("m68k", "m68k", 32),
    arch("microblaze", "microblaze", 32),
    arch("microblazeel", "microblazeel", 32),
    arch("mips", "mips", 32),
    arch("mipsel", "mipsel", 32),
    arch("mips64", "mips64", 64),
    arch("mips64el", "mips64el", 64),
    arch("openrisc", "or1k", 32),
    arch("parisc", "hppa", 32),
    arch("ppc", "ppc", 32),
    arch("ppc64", "ppc64", 64),
    arch("ppc64le", "ppc64", 64),
    arch("ppcemb", "ppcemb", 32),
    arch("riscv32", "riscv32", 32),
    arch("riscv64", "riscv64", 64),
    arch("s390", "s390", 32),
    arch("s390x", "s390x", 64),
    arch("sh4", "sh4", 32),
    arch("sh4eb", "sh4eb", 64),
    arch("sparc", "sparc", 32),
    arch("sparc64", "sparc64", 64),
    arch("unicore32", "unicore32", 32),
    arch("x86_64", "x86_64", 64),
    arch("xtensa", "xtensa", 32),
    arch("xtensaeb", "xtensaeb", 32),
];

/// The architecture libvirt calls `name`.
pub fn by_name(name: &str) -> Option<&'static Arch> {
    ARCHES.iter().find(|a| a.name == name)
}

/// The architecture of a QEMU target as `query-target` names it (`i386` is `i686`).
pub fn from_qemu_target(target: &str) -> Option<&'static Arch> {
    match target {
        "i386" => by_name("i686"),
        "arm" => by_name("armv7l"),
        "or1k" => by_name("openrisc"),
        "hppa" => by_name("parisc"),
        other => by_name(other),
    }
}

/// The architecture of a kernel's machine name (`uname -m`).
pub fn from_uname(machine: &str) -> Option<&'static Arch> {
    match machine {
        "i386" | "i486" | "i586" | "i686" => by_name("i686"),
        "amd64" => by_name("x86_64"),
        "arm64" => by_name("aarch64"),
        other => by_name(other),
    }
}

/// The host architecture assumed when the kernel names one libvirt does not know.
static FALLBACK_HOST: Arch = arch("x86_64", "x86_64", 64);

/// This host's architecture (`x86_64` when the kernel names one libvirt does not know).
pub fn host() -> &'static Arch {
    let machine = nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    from_uname(&machine)
        .or_else(|| from_uname(std::env::consts::ARCH))
        .unwrap_or(&FALLBACK_HOST)
}

/// Whether `host` runs `guest` natively, so that KVM can accelerate it (libvirt's rule: the
/// same architecture, i686 on x86_64, armv7l on aarch64, any ppc64 flavour on ppc64).
pub fn is_native(host: &str, guest: &str) -> bool {
    host == guest
        || (host == "x86_64" && guest == "i686")
        || (host == "aarch64" && guest == "armv7l")
        || (host.starts_with("ppc64") && guest.starts_with("ppc64"))
}

/// Whether an emulator for `emulator` (its `query-target` architecture) can run `guest` guests:
/// its own architecture, i686 on an x86_64 emulator, armv7l on aarch64, ppc64le on ppc64.
pub fn emulator_runs(emulator: &str, guest: &str) -> bool {
    emulator == guest
        || (emulator == "x86_64" && guest == "i686")
        || (emulator == "aarch64" && guest == "armv7l")
        || (emulator == "ppc64" && guest == "ppc64le")
}

/// The QEMU targets whose `qemu-system-*` binary can serve `guest`, best first: its own, then
/// the native target's (libvirt's fallback, e.g. `qemu-system-x86_64` for i686).
pub fn targets_for(host: &str, guest: &'static Arch) -> Vec<&'static str> {
    let mut targets = Vec::new();
    if host == "aarch64" && guest.name == "armv7l" {
        targets.push("aarch64");
    }
    targets.push(guest.qemu_target);
    if is_native(host, guest.name)
        && let Some(h) = by_name(host)
        && !targets.contains(&h.qemu_target)
    {
        targets.push(h.qemu_target);
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i686_maps_to_qemu_i386_and_back() {
        assert_eq!(by_name("i686").map(|a| a.qemu_target), Some("i386"));
        assert_eq!(from_qemu_target("i386").map(|a| a.name), Some("i686"));
        assert_eq!(from_qemu_target("x86_64").map(|a| a.wordsize), Some(64));
        assert!(from_qemu_target("nonsense").is_none());
    }

    #[test]
    fn native_pairs_follow_libvirt() {
        assert!(is_native("x86_64", "x86_64"));
        assert!(is_native("x86_64", "i686"));
        assert!(!is_native("i686", "x86_64"));
        assert!(is_native("aarch64", "armv7l"));
        assert!(!is_native("x86_64", "aarch64"));
    }

    #[test]
    fn i686_falls_back_to_the_x86_64_emulator_on_x86_64_hosts() {
        let i686 = by_name("i686").expect("i686");
        assert_eq!(targets_for("x86_64", i686), vec!["i386", "x86_64"]);
        let aarch64 = by_name("aarch64").expect("aarch64");
        assert_eq!(targets_for("x86_64", aarch64), vec!["aarch64"]);
        assert!(emulator_runs("x86_64", "i686"));
        assert!(!emulator_runs("i686", "x86_64"));
    }

    #[test]
    fn host_arch_is_known() {
        assert!(by_name(host().name).is_some());
    }
}
