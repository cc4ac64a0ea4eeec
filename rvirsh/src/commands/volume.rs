//! Storage volume commands: `vol-list`, `vol-info`, `vol-create`, `vol-upload` (with a progress
//! bar on a terminal), ... with virsh's messages.

use std::io::IsTerminal as _;

use rvirt::StorageVol;
use rvirt_proto::v1::{
    StorageVolCreateFlag, StorageVolDeleteFlag, StorageVolDownloadFlag, StorageVolResizeFlag,
    StorageVolUploadFlag, StorageVolWipeAlgorithm,
};

use super::{CmdError, CmdResult, io_text, read_file};
use crate::format;
use crate::parse::{Args, scaled_size};
use crate::shell::Shell;

/// Finds a volume as virsh does: by name in `--pool` when given (which must be active), else
/// by key, then by path.
async fn lookup(
    sh: &mut Shell,
    text: &str,
    pool_opt: Option<&str>,
    may_name_pool: bool,
) -> Result<StorageVol, CmdError> {
    let conn = sh.conn().await?;
    if let Some(pool_name) = pool_opt {
        let pool = super::pool::lookup(sh, pool_name, true, true).await?;
        if !pool.summary().active {
            return Err(CmdError::msg(format!("pool '{pool_name}' is not active")));
        }
        if let Ok(v) = pool.lookup_volume_by_name(text).await {
            return Ok(v);
        }
    }
    if let Ok(v) = conn.lookup_volume_by_key(text).await {
        return Ok(v);
    }
    // As in virsh, the error shown is the last lookup's (by path).
    let last = match conn.lookup_volume_by_path(text).await {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let context = if pool_opt.is_none() && may_name_pool {
        format!("failed to get vol '{text}', specifying --pool might help")
    } else {
        format!("failed to get vol '{text}'")
    };
    Err(CmdError::with(context, last))
}

async fn arg_vol(sh: &mut Shell, args: &Args) -> Result<StorageVol, CmdError> {
    lookup(sh, args.req("vol"), args.get("pool"), true).await
}

fn wipe_algorithm(name: &str) -> Option<StorageVolWipeAlgorithm> {
    use StorageVolWipeAlgorithm as A;
    Some(match name {
        "zero" => A::Zero,
        "nnsa" => A::Nnsa,
        "dod" => A::Dod,
        "bsi" => A::Bsi,
        "gutmann" => A::Gutmann,
        "schneier" => A::Schneier,
        "pfitzner7" => A::Pfitzner7,
        "pfitzner33" => A::Pfitzner33,
        "random" => A::Random,
        "trim" => A::Trim,
        _ => return None,
    })
}

fn number(args: &Args, name: &str) -> u64 {
    args.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A progress bar on standard error when it is a terminal, for transfers of `total` bytes.
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} [{bar:40}] {percent}% {bytes_per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

pub(crate) async fn run(sh: &mut Shell, args: &Args, command: &str) -> CmdResult {
    match command {
        "vol-list" => list(sh, args).await,
        "vol-create" | "vol-create-from" => create(sh, args, command == "vol-create-from").await,
        "vol-name" | "vol-pool" => {
            let vol = lookup(sh, args.req("vol"), None, false).await?;
            if command == "vol-name" {
                sh.print(&format!("{}\n", vol.name()));
            } else {
                let pool_name = vol.pool_name().to_owned();
                if args.flag("uuid") {
                    let pool = super::pool::lookup(sh, &pool_name, false, true)
                        .await
                        .map_err(|_| CmdError::msg("failed to get parent pool"))?;
                    sh.print(&format!("{}\n", pool.uuid()));
                } else {
                    sh.print(&format!("{pool_name}\n"));
                }
            }
            Ok(())
        }
        "vol-upload" => upload(sh, args).await,
        "vol-download" => download(sh, args).await,
        _ => {
            let given = args.req("vol").to_owned();
            let vol = arg_vol(sh, args).await?;
            match command {
                "vol-info" => {
                    let info = vol.info().await?;
                    sh.print(&format::vol_info(
                        vol.name(),
                        &info,
                        args.flag("bytes"),
                        args.flag("physical"),
                    ));
                }
                "vol-dumpxml" => {
                    let xml = vol.xml_desc().await?;
                    sh.print(&super::domain::with_newline(xml));
                }
                "vol-key" => sh.print(&format!("{}\n", vol.key())),
                "vol-path" => {
                    let path = vol.path().await?;
                    sh.print(&format!("{path}\n"));
                }
                "vol-delete" => {
                    let flags = if args.flag("delete-snapshots") {
                        StorageVolDeleteFlag::WithSnapshots as u32
                    } else {
                        0
                    };
                    vol.delete(flags)
                        .await
                        .map_err(|e| CmdError::with(format!("Failed to delete vol {given}"), e))?;
                    sh.print_extra(&format!("Vol {given} deleted\n"));
                }
                "vol-wipe" => {
                    let algorithm = match args.get("algorithm") {
                        Some(name) => wipe_algorithm(name)
                            .ok_or_else(|| CmdError::msg(format!("Unsupported algorithm '{name}'")))?,
                        None => StorageVolWipeAlgorithm::Zero,
                    };
                    vol.wipe(algorithm)
                        .await
                        .map_err(|e| CmdError::with(format!("Failed to wipe vol {given}"), e))?;
                    sh.print_extra(&format!("Vol {given} wiped\n"));
                }
                _ => resize(sh, args, &vol).await?,
            }
            Ok(())
        }
    }
}

async fn resize(sh: &mut Shell, args: &Args, vol: &StorageVol) -> CmdResult {
    let mut flags = 0;
    if args.flag("allocate") {
        flags |= StorageVolResizeFlag::Allocate as u32;
    }
    let shrink = args.flag("shrink");
    if shrink {
        flags |= StorageVolResizeFlag::Shrink as u32;
    }
    let mut delta = args.flag("delta");
    let mut text = args.req("capacity").trim();
    if let Some(rest) = text.strip_prefix('-') {
        if !shrink {
            return Err(CmdError::msg("negative size requires --shrink"));
        }
        text = rest;
        delta = true;
    }
    if delta {
        flags |= StorageVolResizeFlag::Delta as u32;
    }
    let bytes = scaled_size(text, 1).ok_or_else(|| CmdError::msg(format!("Malformed size {text}")))?;
    let how = if delta { "by" } else { "to" };
    vol.resize(bytes, flags).await.map_err(|e| {
        CmdError::with(
            format!("Failed to change size of volume '{}' {how} {text}", vol.name()),
            e,
        )
    })?;
    sh.print_extra(&format!(
        "Size of volume '{}' successfully changed {how} {text}\n",
        vol.name()
    ));
    Ok(())
}

async fn create(sh: &mut Shell, args: &Args, from: bool) -> CmdResult {
    let mut flags = 0;
    for (name, flag) in [
        ("prealloc-metadata", StorageVolCreateFlag::PreallocMetadata),
        ("reflink", StorageVolCreateFlag::Reflink),
        ("validate", StorageVolCreateFlag::Validate),
    ] {
        if args.flag(name) {
            flags |= flag as u32;
        }
    }
    let pool = super::pool::lookup(sh, args.req("pool"), true, true).await?;
    let file = args.req("file");
    if !from {
        let xml = read_file(file)?;
        let vol = pool
            .create_volume_xml(&xml, flags)
            .await
            .map_err(|e| CmdError::with(format!("Failed to create vol from {file}"), e))?;
        sh.print_extra(&format!("Vol {} created from {file}\n", vol.name()));
        return Ok(());
    }
    let input = lookup(sh, args.req("vol"), args.get("inputpool"), true).await?;
    let xml = read_file(file)?;
    let vol = pool
        .create_volume_xml_from(&xml, &input, flags)
        .await
        .map_err(|e| CmdError::with(format!("Failed to create vol from {file}"), e))?;
    sh.print_extra(&format!(
        "Vol {} created from input vol {}\n",
        vol.name(),
        input.name()
    ));
    Ok(())
}

async fn list(sh: &mut Shell, args: &Args) -> CmdResult {
    let pool = super::pool::lookup(sh, args.req("pool"), true, true).await?;
    let mut vols = pool
        .list_all_volumes()
        .await
        .map_err(|e| CmdError::with("Failed to list volumes", e))?;
    vols.sort_by_key(|x| x.name().to_lowercase());
    let details = args.flag("details");
    let mut rows = Vec::with_capacity(vols.len());
    for vol in &vols {
        let path = vol.path().await.unwrap_or_else(|_| "unknown".into());
        let info = if details { vol.info().await.ok() } else { None };
        rows.push(format::VolRow {
            name: vol.name().to_owned(),
            path,
            info,
        });
    }
    let header = !sh.quiet;
    sh.print(&format::vol_list(&rows, details, header));
    Ok(())
}

async fn upload(sh: &mut Shell, args: &Args) -> CmdResult {
    let given = args.req("vol").to_owned();
    let offset = number(args, "offset");
    let length = number(args, "length");
    let vol = arg_vol(sh, args).await?;
    let file = args.req("file");
    let reader = tokio::fs::File::open(file)
        .await
        .map_err(|e| CmdError::msg(format!("cannot read {file}: {}", io_text(&e))))?;
    let size = reader.metadata().await.map(|m| m.len()).unwrap_or(0);
    let total = if length > 0 { length.min(size) } else { size };
    let flags = if args.flag("sparse") {
        StorageVolUploadFlag::SparseStream as u32
    } else {
        0
    };
    let bar = progress_bar(total);
    let interrupt = sh.interrupt.clone();
    let transfer = vol.upload(offset, length, flags, reader, |done| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    });
    let result = tokio::select! {
        r = transfer => r,
        _ = interrupt.notified() => {
            return Err(CmdError::msg(format!("cannot send data to volume {given}: interrupted")));
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    result.map_err(|e| CmdError::with(format!("cannot upload to volume {given}"), e))?;
    Ok(())
}

async fn download(sh: &mut Shell, args: &Args) -> CmdResult {
    let given = args.req("vol").to_owned();
    let offset = number(args, "offset");
    let length = number(args, "length");
    let vol = arg_vol(sh, args).await?;
    let file = args.req("file").to_owned();
    let (std_file, created) = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
    {
        Ok(f) => (f, true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&file)
                .map_err(|e| CmdError::msg(format!("cannot create {file}: {}", io_text(&e))))?;
            (f, false)
        }
        Err(e) => return Err(CmdError::msg(format!("cannot create {file}: {}", io_text(&e)))),
    };
    let mut writer = tokio::fs::File::from_std(std_file);
    let flags = if args.flag("sparse") {
        StorageVolDownloadFlag::SparseStream as u32
    } else {
        0
    };
    let mut bar: Option<indicatif::ProgressBar> = None;
    let interrupt = sh.interrupt.clone();
    let result = {
        let transfer = vol.download(offset, length, flags, &mut writer, |done, total| {
            let bar =
                bar.get_or_insert_with(|| progress_bar(total).unwrap_or_else(indicatif::ProgressBar::hidden));
            bar.set_position(done);
        });
        tokio::select! {
            r = transfer => r.map_err(|e| CmdError::with(format!("cannot receive data from volume {given}"), e)),
            _ = interrupt.notified() => Err(CmdError::msg(format!("cannot receive data from volume {given}: interrupted"))),
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let finished = match result {
        Ok(transfer) => writer
            .set_len(transfer.total())
            .await
            .map_err(|e| CmdError::msg(format!("cannot close file {file}: {}", io_text(&e)))),
        Err(e) => Err(e),
    };
    if finished.is_err() && created {
        let _ = std::fs::remove_file(&file);
    }
    finished
}
