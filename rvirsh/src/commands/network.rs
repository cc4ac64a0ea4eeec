//! Network commands: `net-list`, `net-info`, `net-define`, `net-start`, ... with virsh's
//! messages (network names unquoted, as virsh prints them).

use rvirt::Network;
use rvirt_proto::v1::{NetworkCreateFlag, NetworkDefineFlag, NetworkListFlag, NetworkXmlFlag};

use super::{CmdError, CmdResult, read_file};
use crate::format;
use crate::parse::Args;
use crate::shell::Shell;

/// Finds a network by UUID (when the text has a UUID's length), then by name.
async fn lookup(sh: &mut Shell, text: &str, by_uuid: bool, by_name: bool) -> Result<Network, CmdError> {
    let conn = sh.conn().await?;
    let mut last = None;
    if by_uuid && text.len() == 36 {
        match conn.lookup_network_by_uuid(text).await {
            Ok(n) => return Ok(n),
            Err(e) => last = Some(e),
        }
    }
    if by_name {
        match conn.lookup_network_by_name(text).await {
            Ok(n) => return Ok(n),
            Err(e) => last = Some(e),
        }
    }
    let context = format!("failed to get network '{text}'");
    Err(match last {
        Some(e) => CmdError::with(context, e),
        None => CmdError::msg(context),
    })
}

pub(crate) async fn run(sh: &mut Shell, args: &Args, command: &str) -> CmdResult {
    match command {
        "net-list" => list(sh, args).await,
        "net-define" | "net-create" => {
            let file = args.req("file");
            let xml = read_file(file)?;
            let conn = sh.conn().await?;
            let (result, verb) = if command == "net-define" {
                let flags = if args.flag("validate") {
                    NetworkDefineFlag::Validate as u32
                } else {
                    0
                };
                (conn.define_network_xml(&xml, flags).await, "define")
            } else {
                let flags = if args.flag("validate") {
                    NetworkCreateFlag::Validate as u32
                } else {
                    0
                };
                (conn.create_network_xml(&xml, flags).await, "create")
            };
            let net =
                result.map_err(|e| CmdError::with(format!("Failed to {verb} network from {file}"), e))?;
            sh.print_extra(&format!("Network {} {verb}d from {file}\n", net.name()));
            Ok(())
        }
        "net-uuid" => {
            let net = lookup(sh, args.req("network"), false, true).await?;
            sh.print(&format!("{}\n", net.uuid()));
            Ok(())
        }
        "net-name" => {
            let net = lookup(sh, args.req("network"), true, false).await?;
            sh.print(&format!("{}\n", net.name()));
            Ok(())
        }
        _ => {
            let given = args.req("network").to_owned();
            let mut net = lookup(sh, &given, true, true).await?;
            match command {
                "net-info" => {
                    net.refresh().await?;
                    let mut summary = net.summary().clone();
                    summary.autostart = net.autostart().await.unwrap_or(false);
                    summary.bridge_name = net.bridge_name().await.unwrap_or_default();
                    sh.print(&format::net_info(&summary));
                }
                "net-dumpxml" => {
                    let flags = if args.flag("inactive") {
                        NetworkXmlFlag::Inactive as u32
                    } else {
                        0
                    };
                    let xml = net.xml_desc(flags).await?;
                    sh.print(&super::domain::with_newline(xml));
                }
                "net-start" => {
                    net.create()
                        .await
                        .map_err(|e| CmdError::with(format!("Failed to start network {given}"), e))?;
                    sh.print_extra(&format!("Network {given} started\n"));
                }
                "net-destroy" => {
                    net.destroy()
                        .await
                        .map_err(|e| CmdError::with(format!("Failed to destroy network {given}"), e))?;
                    sh.print_extra(&format!("Network {given} destroyed\n"));
                }
                "net-undefine" => {
                    net.undefine()
                        .await
                        .map_err(|e| CmdError::with(format!("Failed to undefine network {given}"), e))?;
                    sh.print_extra(&format!("Network {given} has been undefined\n"));
                }
                "net-autostart" => {
                    let enable = !args.flag("disable");
                    net.set_autostart(enable).await.map_err(|e| {
                        let verb = if enable { "mark" } else { "unmark" };
                        CmdError::with(format!("failed to {verb} network {given} as autostarted"), e)
                    })?;
                    let verb = if enable { "marked" } else { "unmarked" };
                    sh.print_extra(&format!("Network {given} {verb} as autostarted\n"));
                }
                _ => {
                    let mut leases = net
                        .dhcp_leases(args.get("mac"))
                        .await
                        .map_err(|e| CmdError::with(format!("Failed to get leases info for {given}"), e))?;
                    leases.sort_by_key(|x| x.mac.to_lowercase());
                    let header = !sh.quiet;
                    sh.print(&format::net_dhcp_leases(&leases, header));
                }
            }
            Ok(())
        }
    }
}

async fn list(sh: &mut Shell, args: &Args) -> CmdResult {
    use NetworkListFlag as F;
    let picked = ["table", "name", "uuid"].iter().filter(|o| args.flag(o)).count();
    if picked > 1 {
        return Err(CmdError::msg(
            "Only one argument from --table, --name and --uuid may be specified.",
        ));
    }
    let mut flags = F::Active as u32;
    if args.flag("inactive") {
        flags = F::Inactive as u32;
    }
    if args.flag("all") {
        flags = F::Active as u32 | F::Inactive as u32;
    }
    for (name, flag) in [
        ("persistent", F::Persistent),
        ("transient", F::Transient),
        ("autostart", F::Autostart),
        ("no-autostart", F::NoAutostart),
    ] {
        if args.flag(name) {
            flags |= flag as u32;
        }
    }
    let conn = sh.conn().await?;
    let mut nets: Vec<rvirt_proto::v1::Network> = conn
        .list_all_networks(flags)
        .await
        .map_err(|e| CmdError::with("Failed to list networks", e))?
        .iter()
        .map(|n| n.summary().clone())
        .collect();
    nets.sort_by_key(|x| x.name.to_lowercase());
    let text = if args.flag("uuid") {
        nets.iter().map(|n| format!("{}\n", n.uuid)).collect()
    } else if args.flag("name") {
        nets.iter().map(|n| format!("{}\n", n.name)).collect()
    } else {
        format::net_list(&nets, !sh.quiet)
    };
    sh.print(&text);
    Ok(())
}
