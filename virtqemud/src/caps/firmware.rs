//! Guest firmware (UEFI and BIOS images) for the domain capabilities' `<loader>`: QEMU's
//! firmware descriptors (`docs/interop/firmware.json`: `/usr/share/qemu/firmware/*.json`,
//! overridden by `/etc/qemu/firmware/*.json`), and well-known OVMF/AAVMF files on distributions
//! that ship no descriptors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The descriptor directories, lowest precedence first (a file in a later directory replaces
/// the file of the same name in an earlier one; an empty file disables it).
pub const DESCRIPTOR_DIRS: &[&str] = &["/usr/share/qemu/firmware", "/etc/qemu/firmware"];

/// Well-known firmware images used when no descriptor names any: (path, arch, secure boot).
pub const WELL_KNOWN: &[(&str, &str, bool)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "x86_64", false),
    ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "x86_64", true),
    ("/usr/share/OVMF/OVMF_CODE.fd", "x86_64", false),
    ("/usr/share/OVMF/OVMF_CODE.secboot.fd", "x86_64", true),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "x86_64", false),
    ("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "x86_64", true),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "x86_64", false),
    ("/usr/share/edk2/x64/OVMF_CODE.secure.4m.fd", "x86_64", true),
    ("/usr/share/qemu/OVMF.fd", "x86_64", false),
    ("/usr/share/AAVMF/AAVMF_CODE.fd", "aarch64", false),
    ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "aarch64", false),
];

/// One firmware image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    /// The executable image.
    pub executable: PathBuf,
    /// Whether it is UEFI (else BIOS).
    pub uefi: bool,
    /// Whether it is mapped as flash (`pflash`), else loaded as a ROM.
    pub flash: bool,
    /// Whether it enforces Secure Boot.
    pub secure_boot: bool,
    /// The architectures and machine-type patterns (`pc-q35-*`) it serves.
    pub targets: Vec<(String, Vec<String>)>,
}

impl Firmware {
    /// Whether it serves `arch` guests on `machine`.
    pub fn serves(&self, arch: &str, machine: &str) -> bool {
        self.targets
            .iter()
            .any(|(a, machines)| a == arch && machines.iter().any(|m| glob_match(m, machine)))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Descriptor {
    #[serde(default)]
    interface_types: Vec<String>,
    mapping: Mapping,
    #[serde(default)]
    targets: Vec<Target>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Deserialize)]
struct Mapping {
    device: String,
    #[serde(default)]
    executable: Option<FileRef>,
    #[serde(default)]
    filename: Option<String>,
}

#[derive(Deserialize)]
struct FileRef {
    filename: String,
}

#[derive(Deserialize)]
struct Target {
    architecture: String,
    #[serde(default)]
    machines: Vec<String>,
}

/// The firmware the descriptors in `dirs` name, plus `well_known` images that exist when the
/// descriptors name none. Unreadable or malformed descriptors are skipped with a warning.
pub fn discover(dirs: &[PathBuf], well_known: &[(&str, &str, bool)]) -> Vec<Firmware> {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                files.insert(name, entry.path());
            }
        }
    }
    let mut found: Vec<Firmware> = files.values().filter_map(|p| read_descriptor(p)).collect();
    if found.is_empty() {
        found = well_known
            .iter()
            .filter(|(path, _, _)| Path::new(path).is_file())
            .map(|(path, arch, secure)| Firmware {
                executable: PathBuf::from(path),
                uefi: true,
                flash: true,
                secure_boot: *secure,
                targets: vec![(
                    (*arch).to_owned(),
                    if *arch == "x86_64" {
                        vec!["pc-q35-*".into(), "pc-i440fx-*".into()]
                    } else {
                        vec!["virt-*".into()]
                    },
                )],
            })
            .collect();
    }
    found
}

fn read_descriptor(path: &Path) -> Option<Firmware> {
    let text = std::fs::read_to_string(path).ok()?;
    if text.trim().is_empty() {
        return None; // an empty file masks a descriptor of the same name
    }
    let descriptor: Descriptor = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a malformed firmware descriptor");
            return None;
        }
    };
    let (executable, flash) = match descriptor.mapping.device.as_str() {
        "flash" => (descriptor.mapping.executable?.filename, true),
        "memory" => (descriptor.mapping.filename?, false),
        _ => return None,
    };
    Some(Firmware {
        executable: PathBuf::from(executable),
        uefi: descriptor.interface_types.iter().any(|t| t == "uefi"),
        flash,
        secure_boot: descriptor.features.iter().any(|f| f == "secure-boot"),
        targets: descriptor
            .targets
            .into_iter()
            .map(|t| {
                (
                    crate::caps::arch::from_qemu_target(&t.architecture)
                        .map_or(t.architecture, |a| a.name.to_owned()),
                    t.machines,
                )
            })
            .collect(),
    })
}

/// Shell-style matching with `*` and `?`, as descriptors use for machine types.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_machine_types() {
        assert!(glob_match("pc-q35-*", "pc-q35-10.0"));
        assert!(!glob_match("pc-q35-*", "pc-i440fx-10.0"));
        assert!(glob_match("pc-?35-*", "pc-q35-9.2"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("virt", "virt-9.0"));
    }

    #[test]
    fn descriptors_are_read_and_later_directories_win() {
        let usr = tempfile::tempdir().expect("tempdir");
        let etc = tempfile::tempdir().expect("tempdir");
        let descriptor = |exe: &str, features: &str| {
            format!(
                r#"{{"description": "UEFI", "interface-types": ["uefi"],
                "mapping": {{"device": "flash", "executable": {{"filename": "{exe}", "format": "raw"}},
                  "nvram-template": {{"filename": "/x/VARS.fd", "format": "raw"}}}},
                "targets": [{{"architecture": "x86_64", "machines": ["pc-q35-*"]}}],
                "features": [{features}], "tags": []}}"#
            )
        };
        std::fs::write(
            usr.path().join("50-ovmf.json"),
            descriptor("/usr/OVMF_CODE.fd", ""),
        )
        .expect("write");
        std::fs::write(
            usr.path().join("40-ovmf-sb.json"),
            descriptor("/usr/OVMF_CODE.secboot.fd", r#""secure-boot", "requires-smm""#),
        )
        .expect("write");
        std::fs::write(usr.path().join("60-broken.json"), "{not json").expect("write");
        // The same name in the later directory replaces the first.
        std::fs::write(
            etc.path().join("50-ovmf.json"),
            descriptor("/etc/OVMF_CODE.fd", ""),
        )
        .expect("write");
        let found = discover(&[usr.path().to_owned(), etc.path().to_owned()], &[]);
        let exes: Vec<_> = found.iter().map(|f| f.executable.display().to_string()).collect();
        assert_eq!(exes, vec!["/usr/OVMF_CODE.secboot.fd", "/etc/OVMF_CODE.fd"]);
        assert!(found[0].secure_boot && found[0].uefi && found[0].flash);
        assert!(found[1].serves("x86_64", "pc-q35-10.0"));
        assert!(!found[1].serves("x86_64", "pc-i440fx-10.0"));
        assert!(!found[1].serves("aarch64", "pc-q35-10.0"));
    }

    #[test]
    fn empty_descriptor_masks_and_missing_well_known_files_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("50-ovmf.json"), "").expect("write");
        assert!(
            discover(
                &[dir.path().to_owned()],
                &[("/nonexistent/OVMF.fd", "x86_64", false)]
            )
            .is_empty()
        );
    }
}
