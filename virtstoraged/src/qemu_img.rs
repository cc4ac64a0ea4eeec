//! `qemu-img` command lines, built purely from a volume definition, and `qemu-img info` output.
//!
//! The rules are libvirt's (`storage_util.c`): `iso` is written as `raw`; `compat`, features
//! and the cluster size only exist for qcow2, whose compat level defaults to 1.1; a backing
//! store needs a format with backing files and excludes preallocation; sizes are passed in KiB
//! rounded up; `convert` drops the backing store and takes its size from the input. Option order
//! matches libvirt's so the argv reads the same, but what counts is the image it produces
//! (checked against libvirt's `storagevolxml2argvdata` by running both).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use rvirt_conf::storage::VolDef;
use serde_json::Value;

/// A volume option `qemu-img` cannot honour for this format, or a bad combination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QemuImgError(pub String);

/// How much of the image to allocate when creating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    /// Only the format's metadata (qcow2).
    Metadata,
    /// Reserve the space with `fallocate`.
    Falloc,
    /// Write every byte.
    Full,
}

impl Preallocation {
    fn as_str(self) -> &'static str {
        match self {
            Preallocation::Metadata => "metadata",
            Preallocation::Falloc => "falloc",
            Preallocation::Full => "full",
        }
    }
}

/// The key of a LUKS-encrypted image: a `secret` object read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksKey {
    /// The object id (libvirt: `<volume name>_encrypt0`).
    pub alias: String,
    /// The file holding the passphrase.
    pub file: PathBuf,
    /// LUKS creation options from `<cipher>` and `<ivgen>` ([`luks_options`]).
    pub options: Vec<(&'static str, String)>,
}

/// QEMU's LUKS creation options for `<cipher name size mode hash>` and `<ivgen name hash>`
/// (`cipher-alg=<name>-<size>`, `cipher-mode`, `hash-alg`, `ivgen-alg`, `ivgen-hash-alg`).
pub fn luks_options(
    enc: &rvirt_conf::storage::Encryption,
) -> Result<Vec<(&'static str, String)>, QemuImgError> {
    let word = |what: &str, v: &str| -> Result<String, QemuImgError> {
        if !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Ok(v.to_ascii_lowercase())
        } else {
            Err(QemuImgError(format!("invalid encryption {what} '{v}'")))
        }
    };
    let mut opts = Vec::new();
    if let Some(c) = &enc.cipher {
        let size: u32 = c
            .size
            .parse()
            .map_err(|_| QemuImgError(format!("invalid cipher size '{}'", c.size)))?;
        opts.push(("cipher-alg", format!("{}-{size}", word("cipher name", &c.name)?)));
        if let Some(mode) = &c.mode {
            opts.push(("cipher-mode", word("cipher mode", mode)?));
        }
        if let Some(hash) = &c.hash {
            opts.push(("hash-alg", word("cipher hash", hash)?));
        }
    }
    if let Some(iv) = &enc.ivgen {
        opts.push(("ivgen-alg", word("ivgen name", &iv.name)?));
        if let Some(hash) = &iv.hash {
            opts.push(("ivgen-hash-alg", word("ivgen hash", hash)?));
        }
    }
    Ok(opts)
}

/// The backing image of a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// Its path.
    pub path: String,
    /// Its format.
    pub format: String,
}

/// Everything `qemu-img create`/`convert` needs to know about the image to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// The volume's format (`raw`, `qcow2`, `iso`, ...).
    pub format: String,
    /// Size the guest sees, in bytes.
    pub capacity: u64,
    /// Space to allocate now, in bytes.
    pub allocation: u64,
    /// Preallocation mode.
    pub preallocation: Option<Preallocation>,
    /// qcow2 compatibility level.
    pub compat: Option<String>,
    /// qcow2 lazy refcounts.
    pub lazy_refcounts: bool,
    /// qcow2 extended L2 entries.
    pub extended_l2: bool,
    /// qcow2 cluster size in bytes.
    pub cluster_size: Option<u64>,
    /// Ask the file system not to copy on write (btrfs).
    pub nocow: bool,
    /// The backing image.
    pub backing: Option<Backing>,
    /// LUKS encryption.
    pub encryption: Option<LuksKey>,
}

impl ImageOptions {
    /// The options of volume `vol`; `prealloc_metadata` is libvirt's
    /// `VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA` (metadata when the allocation is below the
    /// capacity, `falloc` otherwise).
    pub fn from_vol(vol: &VolDef, prealloc_metadata: bool, encryption: Option<LuksKey>) -> ImageOptions {
        let target = vol.target.clone().unwrap_or_default();
        let features = target.features.clone().unwrap_or_default();
        let capacity = vol.capacity_bytes();
        let allocation = vol.allocation_bytes();
        let preallocation = prealloc_metadata.then(|| {
            if capacity.div_ceil(1024) > allocation.div_ceil(1024) {
                Preallocation::Metadata
            } else {
                Preallocation::Falloc
            }
        });
        ImageOptions {
            format: vol.format().unwrap_or("raw").to_owned(),
            capacity,
            allocation,
            preallocation,
            compat: target.compat.clone(),
            lazy_refcounts: features.lazy_refcounts.is_some(),
            extended_l2: features.extended_l2.is_some(),
            cluster_size: vol.cluster_size_bytes().filter(|c| *c > 0),
            nocow: vol.nocow(),
            backing: vol.backing_store.as_ref().map(|b| Backing {
                path: b.path.clone(),
                format: b
                    .format
                    .as_ref()
                    .map_or_else(|| "raw".to_owned(), |f| f.r#type.clone()),
            }),
            encryption,
        }
    }

    /// The format name `qemu-img` uses for the output.
    pub fn qemu_format(&self) -> &str {
        match self.format.as_str() {
            "iso" => "raw",
            "raw" if self.encryption.is_some() => "luks",
            other => other,
        }
    }

    fn is_qcow2(&self) -> bool {
        self.format == "qcow2"
    }

    fn check(&self, converting: bool) -> Result<(), QemuImgError> {
        let unsupported = |what: &str| {
            Err(QemuImgError(format!(
                "{what} is only available with the qcow2 format"
            )))
        };
        if self.preallocation == Some(Preallocation::Metadata) && !self.is_qcow2() {
            return unsupported("metadata preallocation");
        }
        if self.compat.is_some() && !self.is_qcow2() {
            return unsupported("the compat option");
        }
        if (self.lazy_refcounts || self.extended_l2) && !self.is_qcow2() {
            return unsupported("format features");
        }
        if self.cluster_size.is_some() && !self.is_qcow2() {
            return unsupported("the cluster size");
        }
        if self.compat.as_deref() == Some("0.10") && (self.lazy_refcounts || self.extended_l2) {
            return Err(QemuImgError(
                "lazy_refcounts and extended_l2 need compat 1.1: remove <compat>0.10</compat>".into(),
            ));
        }
        if !converting && let Some(backing) = &self.backing {
            if matches!(self.format.as_str(), "raw" | "iso") {
                return Err(QemuImgError(
                    "a raw volume cannot have a backing store: use the qcow2 format".into(),
                ));
            }
            if self.preallocation.is_some() {
                return Err(QemuImgError(
                    "preallocation conflicts with a backing store".into(),
                ));
            }
            if backing.path.is_empty() {
                return Err(QemuImgError("the backing store has no path".into()));
            }
        }
        Ok(())
    }

    fn option_string(&self, converting: bool) -> String {
        let mut opts: Vec<String> = Vec::new();
        if !converting && let Some(backing) = &self.backing {
            opts.push(format!("backing_fmt={}", backing.format));
        }
        if let Some(key) = &self.encryption {
            let prefix = if self.is_qcow2() {
                opts.push("encrypt.format=luks".into());
                "encrypt."
            } else {
                ""
            };
            opts.push(format!("{prefix}key-secret={}", key.alias));
            for (name, value) in &key.options {
                opts.push(format!("{prefix}{name}={value}"));
            }
        }
        if let Some(prealloc) = self.preallocation {
            opts.push(format!("preallocation={}", prealloc.as_str()));
        }
        if self.nocow {
            opts.push("nocow=on".into());
        }
        if self.is_qcow2() {
            opts.push(format!("compat={}", self.compat.as_deref().unwrap_or("1.1")));
        }
        if let Some(size) = self.cluster_size {
            opts.push(format!("cluster_size={size}"));
        }
        if self.is_qcow2() && self.lazy_refcounts {
            opts.push("lazy_refcounts".into());
        }
        if self.is_qcow2() && self.extended_l2 {
            opts.push("extended_l2=on".into());
        }
        opts.join(",")
    }

    fn secret_object(&self, args: &mut Vec<OsString>) {
        if let Some(key) = &self.encryption {
            let mut object = OsString::from(format!("secret,id={},file=", key.alias));
            object.push(escape_commas(key.file.as_os_str()));
            args.push("--object".into());
            args.push(object);
        }
    }
}

/// Doubles commas, as QEMU's option syntax requires inside a value.
fn escape_commas(value: &OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// `qemu-img create` arguments (without the program) for a new image at `path`.
pub fn create_args(path: &Path, image: &ImageOptions) -> Result<Vec<OsString>, QemuImgError> {
    image.check(false)?;
    let mut args: Vec<OsString> = vec!["create".into(), "-f".into(), image.qemu_format().into()];
    if let Some(backing) = &image.backing {
        args.push("-b".into());
        args.push(backing.path.clone().into());
    }
    image.secret_object(&mut args);
    let opts = image.option_string(false);
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.into());
    }
    args.push(path.into());
    let size_k = image.capacity.div_ceil(1024);
    if size_k > 0 || image.backing.is_none() {
        args.push(format!("{size_k}K").into());
    }
    Ok(args)
}

/// `qemu-img convert` arguments copying `input` (in `input_format`) into a new image at `path`.
pub fn convert_args(
    input: &Path,
    input_format: &str,
    path: &Path,
    image: &ImageOptions,
) -> Result<Vec<OsString>, QemuImgError> {
    image.check(true)?;
    let input_format = match input_format {
        "iso" => "raw",
        other => other,
    };
    let mut args: Vec<OsString> = vec![
        "convert".into(),
        "-f".into(),
        input_format.into(),
        "-O".into(),
        image.qemu_format().into(),
    ];
    image.secret_object(&mut args);
    let opts = image.option_string(true);
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.into());
    }
    args.push(input.into());
    args.push(path.into());
    Ok(args)
}

/// `qemu-img resize` arguments; the size is rounded up to 512 bytes as qemu-img requires.
pub fn resize_args(path: &Path, format: &str, capacity: u64, shrink: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["resize".into(), "-f".into(), format.into()];
    if shrink {
        args.push("--shrink".into());
    }
    args.push(path.into());
    args.push(capacity.div_ceil(512).saturating_mul(512).to_string().into());
    args
}

/// `qemu-img resize` arguments for an encrypted image: the passphrase as a secret object read
/// from `key`'s file, the image opened with `--image-opts` (`driver=luks` for a raw LUKS volume,
/// `driver=qcow2` with `encrypt.key-secret` for an encrypted qcow2), so that the size is the
/// payload's, as libvirt resizes encrypted volumes.
pub fn resize_encrypted_args(
    path: &Path,
    format: &str,
    key: &LuksKey,
    capacity: u64,
    shrink: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["resize".into(), "--object".into(), secret_object(key)];
    if shrink {
        args.push("--shrink".into());
    }
    args.push("--image-opts".into());
    args.push(encrypted_image(path, format, key));
    args.push(capacity.div_ceil(512).saturating_mul(512).to_string().into());
    args
}

/// `secret,id=<alias>,file=<key file>`.
fn secret_object(key: &LuksKey) -> OsString {
    let mut object = OsString::from(format!("secret,id={},file=", key.alias));
    object.push(escape_commas(key.file.as_os_str()));
    object
}

/// The `--image-opts` of an encrypted image: `driver=luks` for raw LUKS, `driver=qcow2` with
/// `encrypt.key-secret` for an encrypted qcow2.
fn encrypted_image(path: &Path, format: &str, key: &LuksKey) -> OsString {
    let mut image = OsString::from(if format == "qcow2" {
        format!("driver=qcow2,encrypt.key-secret={},file.filename=", key.alias)
    } else {
        format!("driver=luks,key-secret={},file.filename=", key.alias)
    });
    image.push(escape_commas(path.as_os_str()));
    image
}

/// `qemu-img convert` arguments for a copy of an encrypted image (`input` of `input_format`,
/// opened with `key`) into a new plain image at `path`: the input is decrypted, as libvirt
/// does when it clones an encrypted volume into one without `<encryption>`.
pub fn convert_decrypting_args(
    input: &Path,
    input_format: &str,
    key: &LuksKey,
    path: &Path,
    image: &ImageOptions,
) -> Result<Vec<OsString>, QemuImgError> {
    image.check(true)?;
    if image.encryption.is_some() {
        return Err(QemuImgError(
            "a copy of an encrypted image cannot be encrypted again here".into(),
        ));
    }
    let mut args: Vec<OsString> = vec![
        "convert".into(),
        "--object".into(),
        secret_object(key),
        "--image-opts".into(),
        "-O".into(),
        image.qemu_format().into(),
    ];
    let opts = image.option_string(true);
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.into());
    }
    args.push(encrypted_image(input, input_format, key));
    args.push(path.into());
    Ok(args)
}

/// `qemu-img info` arguments: JSON, the whole backing chain, without taking the image lock (a
/// running VM may hold it); `format` skips probing when the format is known.
pub fn info_args(path: &Path, format: Option<&str>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "info".into(),
        "-U".into(),
        "--output=json".into(),
        "--backing-chain".into(),
    ];
    if let Some(format) = format {
        args.push("-f".into());
        args.push(format.into());
    }
    args.push(path.into());
    args
}

/// One image of `qemu-img info --output=json` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// The file name.
    pub filename: String,
    /// The format qemu-img found (or was told).
    pub format: String,
    /// The size the guest sees.
    pub virtual_size: u64,
    /// Host bytes allocated.
    pub actual_size: Option<u64>,
    /// qcow2 cluster size.
    pub cluster_size: Option<u64>,
    /// The backing file as written in the image.
    pub backing_filename: Option<String>,
    /// The backing file resolved against the image's directory.
    pub full_backing_filename: Option<String>,
    /// The backing file's format as written in the image.
    pub backing_format: Option<String>,
    /// qcow2 compat level.
    pub compat: Option<String>,
    /// qcow2 lazy refcounts.
    pub lazy_refcounts: Option<bool>,
    /// qcow2 extended L2.
    pub extended_l2: Option<bool>,
    /// Whether the image is encrypted.
    pub encrypted: bool,
    /// The encryption format inside a qcow2 image (`luks`, `aes`).
    pub encrypt_format: Option<String>,
}

fn image_info(v: &Value) -> Result<ImageInfo, QemuImgError> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    let data = v.get("format-specific").and_then(|f| f.get("data"));
    Ok(ImageInfo {
        filename: s("filename").unwrap_or_default(),
        format: s("format").ok_or_else(|| QemuImgError("qemu-img info reported no format".into()))?,
        virtual_size: n("virtual-size")
            .ok_or_else(|| QemuImgError("qemu-img info reported no size".into()))?,
        actual_size: n("actual-size"),
        cluster_size: n("cluster-size"),
        backing_filename: s("backing-filename"),
        full_backing_filename: s("full-backing-filename"),
        backing_format: s("backing-filename-format"),
        compat: data
            .and_then(|d| d.get("compat"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        lazy_refcounts: data
            .and_then(|d| d.get("lazy-refcounts"))
            .and_then(Value::as_bool),
        extended_l2: data.and_then(|d| d.get("extended-l2")).and_then(Value::as_bool),
        encrypted: v.get("encrypted").and_then(Value::as_bool).unwrap_or(false),
        encrypt_format: data
            .and_then(|d| d.get("encrypt"))
            .and_then(|e| e.get("format"))
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Parses `qemu-img info --output=json` (one object) or `--backing-chain` (an array, the image
/// first) output into the chain of images.
pub fn parse_info(json: &[u8]) -> Result<Vec<ImageInfo>, QemuImgError> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| QemuImgError(format!("cannot read qemu-img info output: {e}")))?;
    match &value {
        Value::Array(items) if !items.is_empty() => items.iter().map(image_info).collect(),
        Value::Object(_) => Ok(vec![image_info(&value)?]),
        _ => Err(QemuImgError("qemu-img info output is empty".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvirt_conf::storage::{PoolType, VolParseOptions};

    fn vol(xml: &str) -> VolDef {
        VolDef::from_xml(xml, PoolType::Dir, VolParseOptions::default()).expect("volume XML")
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn qcow2_with_backing_matches_libvirt_argv() {
        let v = vol(
            "<volume><name>v</name><capacity unit='G'>5</capacity><target><format type='qcow2'/></target>\
             <backingStore><path>/dev/null</path><format type='raw'/></backingStore></volume>",
        );
        let args = create_args(Path::new("/p/v"), &ImageOptions::from_vol(&v, false, None)).expect("args");
        assert_eq!(
            strings(args),
            [
                "create",
                "-f",
                "qcow2",
                "-b",
                "/dev/null",
                "-o",
                "backing_fmt=raw,compat=1.1",
                "/p/v",
                "5242880K"
            ]
        );
    }

    #[test]
    fn prealloc_flag_gives_metadata_below_capacity_and_falloc_at_capacity() {
        let sparse = vol(
            "<volume><name>v</name><capacity>1048576</capacity><allocation>0</allocation><target><format type='qcow2'/></target></volume>",
        );
        assert_eq!(
            ImageOptions::from_vol(&sparse, true, None).preallocation,
            Some(Preallocation::Metadata)
        );
        let full = vol(
            "<volume><name>v</name><capacity>1048576</capacity><target><format type='qcow2'/></target></volume>",
        );
        assert_eq!(
            ImageOptions::from_vol(&full, true, None).preallocation,
            Some(Preallocation::Falloc)
        );
    }

    #[test]
    fn qcow2_only_options_are_refused_for_raw() {
        let v = vol(
            "<volume><name>v</name><capacity>1024</capacity><target><compat>1.1</compat></target></volume>",
        );
        let err = create_args(Path::new("/p/v"), &ImageOptions::from_vol(&v, false, None))
            .expect_err("compat on raw");
        assert!(err.0.contains("qcow2"), "{err}");
    }

    #[test]
    fn raw_with_backing_is_refused() {
        let v = vol(
            "<volume><name>v</name><capacity>1024</capacity><backingStore><path>/b</path></backingStore></volume>",
        );
        assert!(create_args(Path::new("/p/v"), &ImageOptions::from_vol(&v, false, None)).is_err());
    }

    #[test]
    fn lazy_refcounts_with_compat_0_10_is_refused() {
        let v = vol(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='qcow2'/><compat>0.10</compat>\
             <features><lazy_refcounts/></features></target></volume>",
        );
        assert!(create_args(Path::new("/p/v"), &ImageOptions::from_vol(&v, false, None)).is_err());
    }

    #[test]
    fn convert_drops_backing_and_size() {
        let v = vol(
            "<volume><name>v</name><capacity>1024</capacity><target><format type='qcow2'/></target></volume>",
        );
        let args = convert_args(
            Path::new("/in"),
            "iso",
            Path::new("/out"),
            &ImageOptions::from_vol(&v, false, None),
        )
        .expect("args");
        assert_eq!(
            strings(args),
            [
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "compat=1.1",
                "/in",
                "/out"
            ]
        );
    }

    #[test]
    fn luks_key_file_commas_are_escaped() {
        let v = vol("<volume><name>v</name><capacity>1024</capacity></volume>");
        let key = LuksKey {
            alias: "v_encrypt0".into(),
            options: Vec::new(),
            file: PathBuf::from("/run/a,b"),
        };
        let args = strings(
            create_args(Path::new("/p/v"), &ImageOptions::from_vol(&v, false, Some(key))).expect("args"),
        );
        assert_eq!(args[2], "luks");
        assert!(
            args.contains(&"secret,id=v_encrypt0,file=/run/a,,b".to_owned()),
            "{args:?}"
        );
        assert!(args.contains(&"key-secret=v_encrypt0".to_owned()), "{args:?}");
    }

    #[test]
    fn qcow2_luks_options_carry_the_encrypt_prefix_and_cipher() {
        let v = vol(
            "<volume><name>v</name><capacity>1048576</capacity><target><format type='qcow2'/>\
             <encryption format='luks'><secret type='passphrase' uuid='f52a81b2-424e-490c-823d-6bd4235bc572'/>\
             <cipher name='aes' size='256' mode='xts' hash='sha256'/><ivgen name='plain64' hash='sha256'/>\
             </encryption></target></volume>",
        );
        let enc = v
            .target
            .as_ref()
            .and_then(|t| t.encryption.clone())
            .expect("encryption");
        let key = LuksKey {
            alias: "sec0".into(),
            file: PathBuf::from("/k"),
            options: luks_options(&enc).expect("options"),
        };
        let args = strings(
            create_args(Path::new("/p/v"), &ImageOptions::from_vol(&v, false, Some(key))).expect("args"),
        );
        assert_eq!(args[2], "qcow2");
        let o = args.iter().position(|a| a == "-o").expect("-o");
        assert_eq!(
            args[o + 1],
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-256,encrypt.cipher-mode=xts,\
             encrypt.hash-alg=sha256,encrypt.ivgen-alg=plain64,encrypt.ivgen-hash-alg=sha256,compat=1.1"
        );
    }

    #[test]
    fn luks_options_refuse_what_could_inject_options() {
        let mut enc = rvirt_conf::storage::Encryption {
            format: "luks".into(),
            engine: None,
            secret: Vec::new(),
            cipher: Some(rvirt_conf::storage::Cipher {
                name: "aes,key-secret=x".into(),
                size: "256".into(),
                mode: None,
                hash: None,
            }),
            ivgen: None,
        };
        assert!(luks_options(&enc).is_err());
        if let Some(c) = enc.cipher.as_mut() {
            c.name = "aes".into();
            c.size = "big".into();
        }
        assert!(luks_options(&enc).is_err());
    }

    #[test]
    fn qcow2_encryption_is_read_from_info() {
        let info = parse_info(
            br#"{"filename":"/p/v","format":"qcow2","virtual-size":1048576,"encrypted":true,
               "format-specific":{"type":"qcow2","data":{"compat":"1.1","encrypt":{"format":"luks","cipher-alg":"aes-256"}}}}"#,
        )
        .expect("parse");
        assert!(info[0].encrypted);
        assert_eq!(info[0].encrypt_format.as_deref(), Some("luks"));
    }

    #[test]
    fn encrypted_resize_opens_the_image_with_its_secret() {
        let key = LuksKey {
            alias: "sec0".into(),
            file: PathBuf::from("/keys/a,b.key"),
            options: Vec::new(),
        };
        assert_eq!(
            strings(resize_encrypted_args(
                Path::new("/p/v,1"),
                "raw",
                &key,
                1000,
                false
            )),
            [
                "resize",
                "--object",
                "secret,id=sec0,file=/keys/a,,b.key",
                "--image-opts",
                "driver=luks,key-secret=sec0,file.filename=/p/v,,1",
                "1024"
            ]
        );
        assert_eq!(
            strings(resize_encrypted_args(
                Path::new("/p/q"),
                "qcow2",
                &key,
                4096,
                true
            )),
            [
                "resize",
                "--object",
                "secret,id=sec0,file=/keys/a,,b.key",
                "--shrink",
                "--image-opts",
                "driver=qcow2,encrypt.key-secret=sec0,file.filename=/p/q",
                "4096"
            ]
        );
    }

    #[test]
    fn a_copy_of_an_encrypted_image_decrypts_it() {
        let key = LuksKey {
            alias: "secin".into(),
            file: PathBuf::from("/keys/k.key"),
            options: Vec::new(),
        };
        let vol = vol("<volume><name>plain.qcow2</name><capacity>1048576</capacity>\
             <target><format type='qcow2'/></target></volume>");
        let image = ImageOptions::from_vol(&vol, false, None);
        assert_eq!(
            strings(
                convert_decrypting_args(
                    Path::new("/p/enc.img"),
                    "raw",
                    &key,
                    Path::new("/p/plain.qcow2"),
                    &image
                )
                .expect("args")
            ),
            [
                "convert",
                "--object",
                "secret,id=secin,file=/keys/k.key",
                "--image-opts",
                "-O",
                "qcow2",
                "-o",
                "compat=1.1",
                "driver=luks,key-secret=secin,file.filename=/p/enc.img",
                "/p/plain.qcow2"
            ]
        );
    }

    #[test]
    fn resize_rounds_to_sectors() {
        assert_eq!(
            strings(resize_args(Path::new("/v"), "qcow2", 1000, true)),
            ["resize", "-f", "qcow2", "--shrink", "/v", "1024"]
        );
    }

    #[test]
    fn info_chain_is_parsed() {
        let json = br#"[{"filename":"a","format":"qcow2","virtual-size":10,"cluster-size":65536,
            "backing-filename":"b","full-backing-filename":"/d/b","backing-filename-format":"raw",
            "format-specific":{"type":"qcow2","data":{"compat":"1.1","lazy-refcounts":true}}},
            {"filename":"/d/b","format":"raw","virtual-size":10}]"#;
        let chain = parse_info(json).expect("parse");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].compat.as_deref(), Some("1.1"));
        assert_eq!(chain[0].lazy_refcounts, Some(true));
        assert_eq!(chain[0].full_backing_filename.as_deref(), Some("/d/b"));
        assert!(parse_info(b"garbage").is_err());
    }
}
