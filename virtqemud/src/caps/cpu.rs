//! CPU models: their vendors (QEMU does not say; libvirt's CPU map does), which of them the
//! domain XML may name, and which named model best stands for the host (`host-model`).

use crate::qmp::commands::CpuDefinitionInfo;

/// Models that are not real CPUs: QEMU's `host`, `max` and `base`. They are CPU modes
/// (host-passthrough, maximum) or internal, never `<model>` names.
pub const META_MODELS: &[&str] = &["host", "max", "base"];

/// The model name without its version suffix (`EPYC-Rome-v4` → `EPYC-Rome`).
pub fn family(name: &str) -> &str {
    match name.rsplit_once("-v") {
        Some((base, version)) if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// The vendor of an x86 CPU model as libvirt's CPU map has it (`unknown` for the generic
/// models); `unknown` on other architectures.
pub fn vendor(arch: &str, name: &str) -> &'static str {
    if arch != "x86_64" && arch != "i686" {
        return "unknown";
    }
    let family = family(name);
    if family.starts_with("EPYC") || family.starts_with("Opteron_") || matches!(family, "phenom" | "athlon") {
        "AMD"
    } else if family.starts_with("Dhyana") {
        "Hygon"
    } else if family.starts_with("YongFeng") {
        "Zhaoxin"
    } else if matches!(
        family,
        "486"
            | "pentium"
            | "pentium2"
            | "pentium3"
            | "qemu32"
            | "qemu64"
            | "kvm32"
            | "kvm64"
            | "base"
            | "max"
            | "host"
    ) {
        "unknown"
    } else {
        "Intel"
    }
}

/// Newest first, the model families that may stand for a host of each vendor.
const HOST_MODEL_CANDIDATES: &[(&str, &[&str])] = &[
    (
        "AMD",
        &[
            "EPYC-Turin",
            "EPYC-Genoa",
            "EPYC-Milan",
            "EPYC-Rome",
            "EPYC",
            "Opteron_G5",
            "Opteron_G4",
            "Opteron_G3",
            "Opteron_G2",
            "Opteron_G1",
        ],
    ),
    (
        "Intel",
        &[
            "GraniteRapids",
            "SapphireRapids",
            "Icelake-Server",
            "Cooperlake",
            "Cascadelake-Server",
            "Skylake-Server",
            "Skylake-Client",
            "Broadwell",
            "Haswell",
            "IvyBridge",
            "SandyBridge",
            "Westmere",
            "Nehalem",
            "Penryn",
            "Conroe",
        ],
    ),
    ("Hygon", &["Dhyana"]),
];

/// The named model `host-model` resolves to for a host of `vendor`: the newest model of that
/// vendor the accelerator can run without missing features. `None` when none can (then the
/// mode is reported unsupported).
pub fn host_model<'a>(
    vendor: Option<&str>,
    models: &'a [CpuDefinitionInfo],
) -> Option<&'a CpuDefinitionInfo> {
    let candidates = HOST_MODEL_CANDIDATES
        .iter()
        .find(|(v, _)| Some(*v) == vendor)
        .map(|(_, c)| *c)?;
    let usable = |m: &&CpuDefinitionInfo| m.unavailable_features.as_ref().is_some_and(Vec::is_empty);
    candidates
        .iter()
        .find_map(|family| models.iter().filter(usable).find(|m| m.name == *family))
}

/// The models a domain may name, sorted as libvirt sorts them (byte order).
pub fn custom_models(models: &[CpuDefinitionInfo], include_deprecated: bool) -> Vec<&CpuDefinitionInfo> {
    let mut out: Vec<&CpuDefinitionInfo> = models
        .iter()
        .filter(|m| !META_MODELS.contains(&m.name.as_str()))
        .filter(|m| include_deprecated || !m.deprecated)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::name::Name;

    fn model(name: &str, missing: Option<&[&str]>) -> CpuDefinitionInfo {
        CpuDefinitionInfo {
            name: name.into(),
            migration_safe: true,
            is_static: false,
            unavailable_features: missing.map(|m| m.iter().map(|s| Name::from(*s)).collect()),
            typename: format!("{name}-x86_64-cpu").into(),
            alias_of: None,
            deprecated: false,
        }
    }

    #[test]
    fn vendors_follow_libvirt_cpu_map() {
        assert_eq!(vendor("x86_64", "EPYC-Rome-v4"), "AMD");
        assert_eq!(vendor("x86_64", "Opteron_G2"), "AMD");
        assert_eq!(vendor("x86_64", "Skylake-Client-IBRS"), "Intel");
        assert_eq!(vendor("x86_64", "core2duo-v1"), "Intel");
        assert_eq!(vendor("x86_64", "qemu64"), "unknown");
        assert_eq!(vendor("x86_64", "Dhyana-v2"), "Hygon");
        assert_eq!(vendor("aarch64", "cortex-a57"), "unknown");
        assert_eq!(family("Icelake-Server-v7"), "Icelake-Server");
        assert_eq!(family("Snowridge"), "Snowridge");
    }

    #[test]
    fn host_model_is_the_newest_usable_model_of_the_vendor() {
        let models = vec![
            model("EPYC-Milan", Some(&["pku"])),
            model("EPYC-Rome", Some(&[])),
            model("EPYC", Some(&[])),
            model("Skylake-Server", Some(&[])),
        ];
        assert_eq!(
            host_model(Some("AMD"), &models).map(|m| m.name.as_str()),
            Some("EPYC-Rome")
        );
        assert_eq!(
            host_model(Some("Intel"), &models).map(|m| m.name.as_str()),
            Some("Skylake-Server")
        );
        assert!(host_model(Some("Hygon"), &models).is_none());
        assert!(host_model(None, &models).is_none());
        let unknown_usability = vec![model("EPYC-Rome", None)];
        assert!(host_model(Some("AMD"), &unknown_usability).is_none());
    }

    #[test]
    fn custom_models_drop_meta_models_and_sort_bytewise() {
        let mut deprecated = model("Icelake-Client", Some(&[]));
        deprecated.deprecated = true;
        let models = vec![
            model("qemu64", Some(&[])),
            model("max", Some(&[])),
            model("EPYC", Some(&[])),
            model("486", Some(&[])),
            deprecated,
        ];
        let names = |v: Vec<&CpuDefinitionInfo>| v.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(custom_models(&models, true)),
            vec!["486", "EPYC", "Icelake-Client", "qemu64"]
        );
        assert_eq!(
            names(custom_models(&models, false)),
            vec!["486", "EPYC", "qemu64"]
        );
    }
}
