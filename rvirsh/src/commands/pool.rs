//! Storage pool commands: `pool-list`, `pool-info`, `pool-define`, `pool-start`, ... with
//! virsh's messages.

use rvirt::StoragePool;
use rvirt_proto::v1::{
    StoragePoolBuildFlag, StoragePoolCreateFlag, StoragePoolDefineFlag, StoragePoolListFlag,
    StoragePoolXmlFlag,
};

use super::{CmdError, CmdResult, exclusive, read_file};
use crate::format;
use crate::parse::Args;
use crate::shell::Shell;

/// Finds a pool by UUID (when the text has a UUID's length), then by name.
pub(crate) async fn lookup(
    sh: &mut Shell,
    text: &str,
    by_uuid: bool,
    by_name: bool,
) -> Result<StoragePool, CmdError> {
    let conn = sh.conn().await?;
    let mut last = None;
    if by_uuid && text.len() == 36 {
        match conn.lookup_storage_pool_by_uuid(text).await {
            Ok(p) => return Ok(p),
            Err(e) => last = Some(e),
        }
    }
    if by_name {
        match conn.lookup_storage_pool_by_name(text).await {
            Ok(p) => return Ok(p),
            Err(e) => last = Some(e),
        }
    }
    let context = format!("failed to get pool '{text}'");
    Err(match last {
        Some(e) => CmdError::with(context, e),
        None => CmdError::msg(context),
    })
}

fn create_flags(args: &Args) -> Result<u32, CmdError> {
    exclusive(args, "overwrite", "no-overwrite")?;
    let mut flags = 0;
    if args.flag("build") {
        flags |= StoragePoolCreateFlag::WithBuild as u32;
    }
    if args.flag("overwrite") {
        flags |= StoragePoolCreateFlag::WithBuildOverwrite as u32;
    }
    if args.flag("no-overwrite") {
        flags |= StoragePoolCreateFlag::WithBuildNoOverwrite as u32;
    }
    Ok(flags)
}

async fn row(pool: &StoragePool) -> Result<format::PoolRow, CmdError> {
    let info = pool
        .info()
        .await
        .map_err(|e| CmdError::with("Could not retrieve pool information", e))?;
    let s = pool.summary();
    Ok(format::PoolRow {
        name: s.name.clone(),
        uuid: s.uuid.clone(),
        active: s.active,
        persistent: s.persistent,
        autostart: pool.autostart().await.unwrap_or(s.autostart),
        info,
    })
}

pub(crate) async fn run(sh: &mut Shell, args: &Args, command: &str) -> CmdResult {
    match command {
        "pool-list" => return list(sh, args).await,
        "pool-define" | "pool-create" => {
            let file = args.req("file");
            let xml = read_file(file)?;
            let conn = sh.conn().await?;
            let (result, verb) = if command == "pool-define" {
                let flags = if args.flag("validate") {
                    StoragePoolDefineFlag::Validate as u32
                } else {
                    0
                };
                (conn.define_storage_pool_xml(&xml, flags).await, "define")
            } else {
                let flags = create_flags(args)?;
                (conn.create_storage_pool_xml(&xml, flags).await, "create")
            };
            let pool = result.map_err(|e| CmdError::with(format!("Failed to {verb} pool from {file}"), e))?;
            sh.print_extra(&format!("Pool {} {verb}d from {file}\n", pool.name()));
            return Ok(());
        }
        _ => {}
    }
    let given = args.req("pool").to_owned();
    let (by_uuid, by_name) = match command {
        "pool-name" => (true, false),
        "pool-uuid" => (false, true),
        _ => (true, true),
    };
    let mut pool = lookup(sh, &given, by_uuid, by_name).await?;
    match command {
        "pool-info" => {
            let row = row(&pool).await?;
            sh.print(&format::pool_info(&row, args.flag("bytes")));
        }
        "pool-dumpxml" => {
            let flags = if args.flag("inactive") {
                StoragePoolXmlFlag::Inactive as u32
            } else {
                0
            };
            let xml = pool.xml_desc(flags).await?;
            sh.print(&super::domain::with_newline(xml));
        }
        "pool-name" => sh.print(&format!("{}\n", pool.name())),
        "pool-uuid" => sh.print(&format!("{}\n", pool.uuid())),
        "pool-autostart" => {
            let enable = !args.flag("disable");
            pool.set_autostart(enable).await.map_err(|e| {
                let verb = if enable { "mark" } else { "unmark" };
                CmdError::with(format!("failed to {verb} pool {given} as autostarted"), e)
            })?;
            let verb = if enable { "marked" } else { "unmarked" };
            sh.print_extra(&format!("Pool {given} {verb} as autostarted\n"));
        }
        "pool-start" => {
            let flags = create_flags(args)?;
            pool.create(flags)
                .await
                .map_err(|e| CmdError::with(format!("Failed to start pool {given}"), e))?;
            sh.print_extra(&format!("Pool {given} started\n"));
        }
        "pool-build" => {
            exclusive(args, "overwrite", "no-overwrite")?;
            let mut flags = 0;
            if args.flag("no-overwrite") {
                flags |= StoragePoolBuildFlag::NoOverwrite as u32;
            }
            if args.flag("overwrite") {
                flags |= StoragePoolBuildFlag::Overwrite as u32;
            }
            pool.build(flags)
                .await
                .map_err(|e| CmdError::with(format!("Failed to build pool {given}"), e))?;
            sh.print_extra(&format!("Pool {given} built\n"));
        }
        "pool-destroy" => {
            pool.destroy()
                .await
                .map_err(|e| CmdError::with(format!("Failed to destroy pool {given}"), e))?;
            sh.print_extra(&format!("Pool {given} destroyed\n"));
        }
        "pool-delete" => {
            pool.delete(0)
                .await
                .map_err(|e| CmdError::with(format!("Failed to delete pool {given}"), e))?;
            sh.print_extra(&format!("Pool {given} deleted\n"));
        }
        "pool-refresh" => {
            pool.refresh()
                .await
                .map_err(|e| CmdError::with(format!("Failed to refresh pool {given}"), e))?;
            sh.print_extra(&format!("Pool {given} refreshed\n"));
        }
        _ => {
            pool.undefine()
                .await
                .map_err(|e| CmdError::with(format!("Failed to undefine pool {given}"), e))?;
            sh.print_extra(&format!("Pool {given} has been undefined\n"));
        }
    }
    Ok(())
}

/// The list flag of a pool type name, as `pool-list --type` takes them.
fn type_flag(name: &str) -> Option<StoragePoolListFlag> {
    use StoragePoolListFlag as F;
    Some(match name {
        "dir" => F::Dir,
        "fs" => F::Fs,
        "netfs" => F::Netfs,
        "logical" => F::Logical,
        "disk" => F::Disk,
        "iscsi" => F::Iscsi,
        "iscsi-direct" => F::IscsiDirect,
        "scsi" => F::Scsi,
        "mpath" => F::Mpath,
        "rbd" => F::Rbd,
        "sheepdog" => F::Sheepdog,
        "gluster" => F::Gluster,
        "zfs" => F::Zfs,
        "vstorage" => F::Vstorage,
        _ => return None,
    })
}

async fn list(sh: &mut Shell, args: &Args) -> CmdResult {
    use StoragePoolListFlag as F;
    exclusive(args, "all", "inactive")?;
    exclusive(args, "details", "uuid")?;
    exclusive(args, "details", "name")?;
    let mut flags = F::Active as u32;
    if args.flag("inactive") {
        flags = F::Inactive as u32;
    }
    if args.flag("all") {
        flags = F::Active as u32 | F::Inactive as u32;
    }
    for (name, flag) in [
        ("autostart", F::Autostart),
        ("no-autostart", F::NoAutostart),
        ("persistent", F::Persistent),
        ("transient", F::Transient),
    ] {
        if args.flag(name) {
            flags |= flag as u32;
        }
    }
    if let Some(types) = args.get("type") {
        for t in types.split(',').filter(|t| !t.is_empty()) {
            let flag = type_flag(t).ok_or_else(|| CmdError::msg(format!("Invalid pool type '{t}'")))?;
            flags |= flag as u32;
        }
    }
    let conn = sh.conn().await?;
    let mut pools = conn
        .list_all_storage_pools(flags)
        .await
        .map_err(|e| CmdError::with("Failed to list pools", e))?;
    pools.sort_by_key(|x| x.name().to_lowercase());
    let mut rows = Vec::with_capacity(pools.len());
    for pool in &pools {
        rows.push(row(pool).await?);
    }
    let text = if args.flag("uuid") || args.flag("name") {
        format::pool_list_ids(&rows, args.flag("uuid"), args.flag("name"))
    } else {
        format::pool_list(&rows, args.flag("details"), !sh.quiet)
    };
    sh.print(&text);
    Ok(())
}
