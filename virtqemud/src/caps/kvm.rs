//! Whether KVM is usable on this host, asked through `/dev/kvm` with `kvm-ioctls`.

use serde::{Deserialize, Serialize};

/// The stable KVM API version every usable kernel reports (`KVM_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;

/// What `/dev/kvm` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmInfo {
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// The most vCPUs one VM may have (`KVM_CAP_MAX_VCPUS`, else `KVM_CAP_NR_VCPUS`, else 4 as
    /// the kernel documents).
    pub max_vcpus: u32,
    /// The recommended vCPU count (`KVM_CAP_NR_VCPUS`).
    pub nr_vcpus: u32,
    /// A few extensions and their values (0 is absent), for diagnostics.
    pub extensions: Vec<(String, i32)>,
}

/// The extensions reported in [`KvmInfo::extensions`].
const EXTENSIONS: &[(&str, u32)] = &[
    ("KVM_CAP_IRQCHIP", kvm_bindings::KVM_CAP_IRQCHIP),
    ("KVM_CAP_USER_MEMORY", kvm_bindings::KVM_CAP_USER_MEMORY),
    ("KVM_CAP_IOEVENTFD", kvm_bindings::KVM_CAP_IOEVENTFD),
    ("KVM_CAP_IRQFD", kvm_bindings::KVM_CAP_IRQFD),
    ("KVM_CAP_MAX_VCPU_ID", kvm_bindings::KVM_CAP_MAX_VCPU_ID),
    ("KVM_CAP_IMMEDIATE_EXIT", kvm_bindings::KVM_CAP_IMMEDIATE_EXIT),
];

/// Opens `/dev/kvm` and asks it; `Err` says why KVM is not usable.
pub fn probe() -> Result<KvmInfo, String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let api_version = kvm.get_api_version();
    if api_version != KVM_API_VERSION {
        return Err(format!(
            "/dev/kvm reports API version {api_version}, not {KVM_API_VERSION}"
        ));
    }
    let cap = |c: u32| kvm.check_extension_raw(libc::c_ulong::from(c));
    let nr = cap(kvm_bindings::KVM_CAP_NR_VCPUS);
    let max = cap(kvm_bindings::KVM_CAP_MAX_VCPUS);
    let nr_vcpus = if nr > 0 { nr as u32 } else { 4 };
    let max_vcpus = if max > 0 { max as u32 } else { nr_vcpus };
    Ok(KvmInfo {
        api_version,
        max_vcpus,
        nr_vcpus,
        extensions: EXTENSIONS
            .iter()
            .map(|(name, c)| ((*name).to_owned(), cap(*c)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_probe_answers_consistently_when_dev_kvm_opens() {
        // Not every test machine has /dev/kvm; where it opens, its answers must be coherent.
        if std::fs::File::open("/dev/kvm").is_err() {
            assert!(probe().is_err(), "no /dev/kvm means no KVM");
            return;
        }
        let info = probe().expect("KVM answers");
        assert_eq!(info.api_version, KVM_API_VERSION);
        assert!(info.max_vcpus >= info.nr_vcpus && info.nr_vcpus >= 1, "{info:?}");
        assert!(
            info.extensions
                .iter()
                .any(|(name, value)| name == "KVM_CAP_USER_MEMORY" && *value > 0),
            "every usable KVM has user memory: {info:?}"
        );
    }
}
