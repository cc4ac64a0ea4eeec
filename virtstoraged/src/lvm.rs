//! Logical volumes (logical pools): listing a volume group's LVs and sizes with `lvs`/`vgs`,
//! creating, cloning into, resizing and removing LVs.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use rvirt_conf::storage::{Permissions, PoolDef, ScaledXml, VolDef, VolTarget, VolType};

use crate::command::CommandRunner;
use crate::error::{Result, StorageError};

fn vg(pool: &PoolDef) -> String {
    pool.source_name().unwrap_or(pool.name()).to_owned()
}

fn report_args(fields: &str, target: String) -> Vec<OsString> {
    vec![
        "--noheadings".into(),
        "--units".into(),
        "b".into(),
        "--nosuffix".into(),
        "--separator".into(),
        "#".into(),
        "-o".into(),
        fields.into(),
        target.into(),
    ]
}

fn number(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

fn lv_def(pool: &PoolDef, name: &str, uuid: &str, size: u64) -> VolDef {
    let path = format!("/dev/{}/{name}", vg(pool));
    let perms = std::fs::metadata(&path).ok().map(|m| Permissions {
        mode: Some(format!("0{:o}", m.mode() & 0o777)),
        owner: Some(m.uid().to_string()),
        group: Some(m.gid().to_string()),
        label: None,
    });
    VolDef {
        vol_type: Some(VolType::Block),
        name: name.to_owned(),
        key: Some(uuid.to_owned()),
        source: None,
        capacity: Some(ScaledXml::bytes(size, "bytes")),
        allocation: Some(ScaledXml::bytes(size, "bytes")),
        physical: None,
        target: Some(VolTarget {
            path: Some(path),
            permissions: perms,
            ..VolTarget::default()
        }),
        backing_store: None,
    }
}

/// Parses `lvs` output (`name#uuid#size#attr` lines) into volumes; thin pools and hidden LVs
/// are skipped.
pub fn parse_lvs(pool: &PoolDef, text: &str) -> Vec<VolDef> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim().split('#').collect();
            let [name, uuid, size, attr] = fields.as_slice() else {
                return None;
            };
            if name.starts_with('[') || attr.starts_with('t') {
                return None;
            }
            Some(lv_def(pool, name, uuid, number(size)))
        })
        .collect()
}

/// The volume group's sizes and logical volumes.
pub async fn refresh(runner: &dyn CommandRunner, pool: &PoolDef) -> Result<((u64, u64, u64), Vec<VolDef>)> {
    let vg = vg(pool);
    let out = runner
        .run("vgs", &report_args("vg_size,vg_free", vg.clone()))
        .await?;
    let text = String::from_utf8_lossy(&out);
    let (size, free) = text
        .lines()
        .find_map(|l| l.trim().split_once('#').map(|(a, b)| (number(a), number(b))))
        .ok_or_else(|| StorageError::failed(format!("vgs reported nothing for volume group '{vg}'")))?;
    let out = runner
        .run("lvs", &report_args("lv_name,lv_uuid,lv_size,lv_attr", vg))
        .await?;
    let vols = parse_lvs(pool, &String::from_utf8_lossy(&out));
    Ok(((size, size.saturating_sub(free), free), vols))
}

/// One logical volume, if it exists.
pub async fn probe(runner: &dyn CommandRunner, pool: &PoolDef, name: &str) -> Result<Option<VolDef>> {
    let out = runner
        .run(
            "lvs",
            &report_args("lv_name,lv_uuid,lv_size,lv_attr", format!("{}/{name}", vg(pool))),
        )
        .await?;
    Ok(parse_lvs(pool, &String::from_utf8_lossy(&out)).into_iter().next())
}

/// Creates a logical volume of the volume's capacity.
pub async fn create(runner: &dyn CommandRunner, pool: &PoolDef, vol: &VolDef) -> Result<()> {
    if vol.backing_store.is_some() {
        return Err(StorageError::new(
            rvirt_proto::v1::ErrorCode::ConfigUnsupported,
            "Logical volumes cannot have a backing store",
        ));
    }
    let size_k = vol.capacity_bytes().div_ceil(1024);
    let args: Vec<OsString> = vec![
        "--yes".into(),
        "--name".into(),
        vol.name.clone().into(),
        "-L".into(),
        format!("{size_k}K").into(),
        vg(pool).into(),
    ];
    runner.run("lvcreate", &args).await?;
    let path = format!("/dev/{}/{}", vg(pool), vol.name);
    let perms = vol.permissions();
    if let Some(mode) = perms.mode_bits() {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| StorageError::io(format!("Cannot set the mode of {path}"), &e))?;
    }
    if perms.uid().is_some() || perms.gid().is_some() {
        std::os::unix::fs::chown(&path, perms.uid(), perms.gid())
            .map_err(|e| StorageError::io(format!("Cannot set the owner of {path}"), &e))?;
    }
    Ok(())
}

/// Creates a logical volume and copies `input` (of `format`) into it; removes it on failure.
pub async fn create_from(
    runner: &dyn CommandRunner,
    pool: &PoolDef,
    vol: &VolDef,
    input: &Path,
    format: &str,
) -> Result<()> {
    create(runner, pool, vol).await?;
    let path = format!("/dev/{}/{}", vg(pool), vol.name);
    let format = if format == "iso" { "raw" } else { format };
    let args: Vec<OsString> = vec![
        "convert".into(),
        "-n".into(),
        "-f".into(),
        format.into(),
        "-O".into(),
        "raw".into(),
        input.into(),
        path.into(),
    ];
    if let Err(e) = runner.run("qemu-img", &args).await {
        let _ = delete(runner, pool, &vol.name).await;
        return Err(e);
    }
    Ok(())
}

/// Removes a logical volume.
pub async fn delete(runner: &dyn CommandRunner, pool: &PoolDef, name: &str) -> Result<()> {
    runner
        .run("lvremove", &["-f".into(), format!("{}/{name}", vg(pool)).into()])
        .await
        .map(|_| ())
}

/// Resizes a logical volume.
pub async fn resize(
    runner: &dyn CommandRunner,
    pool: &PoolDef,
    name: &str,
    capacity: u64,
    shrink: bool,
) -> Result<()> {
    let mut args: Vec<OsString> = Vec::new();
    if shrink {
        args.push("-f".into());
    }
    args.push("-L".into());
    args.push(format!("{}K", capacity.div_ceil(1024)).into());
    args.push(format!("{}/{name}", vg(pool)).into());
    runner.run("lvresize", &args).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvs_output_becomes_block_volumes() {
        let pool = PoolDef::from_xml("<pool type='logical'><name>vg0</name></pool>").expect("pool");
        let vols = parse_lvs(
            &pool,
            "  disk1#AbCd-1#1073741824#-wi-a-----\n  thin#X#5#twi-a-tz--\n  [lvol0_pmspare]#Y#4#ewi-------\n",
        );
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].name, "disk1");
        assert_eq!(vols[0].key.as_deref(), Some("AbCd-1"));
        assert_eq!(vols[0].capacity_bytes(), 1 << 30);
        assert_eq!(
            vols[0].target.as_ref().and_then(|t| t.path.as_deref()),
            Some("/dev/vg0/disk1")
        );
    }
}
