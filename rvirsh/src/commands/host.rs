//! Host commands: `version`, `hostname`, `uri`, `capabilities`, `domcapabilities`, `nodeinfo`.

use rvirt_proto::v1::GetDomainCapabilitiesRequest;

use super::{CmdError, CmdResult};
use crate::format;
use crate::parse::Args;
use crate::shell::Shell;

pub(crate) async fn run(sh: &mut Shell, args: &Args, command: &str) -> CmdResult {
    let conn = sh.conn().await?;
    let text = match command {
        "version" => {
            let hv_type = conn
                .driver_type()
                .await
                .map_err(|e| CmdError::with("failed to get hypervisor type", e))?;
            let v = conn
                .version()
                .await
                .map_err(|e| CmdError::with("failed to get the hypervisor version", e))?;
            let daemon = args.flag("daemon").then_some(v.libvirt_api_version);
            format::version(&hv_type, v.libvirt_api_version, v.hypervisor_version, daemon)
        }
        "hostname" => {
            let name = conn
                .hostname()
                .await
                .map_err(|e| CmdError::with("failed to get hostname", e))?;
            format!("{name}\n")
        }
        "uri" => {
            let uri = conn
                .canonical_uri()
                .await
                .map_err(|e| CmdError::with("failed to get URI", e))?;
            format!("{uri}\n")
        }
        "capabilities" => {
            let caps = conn
                .capabilities()
                .await
                .map_err(|e| CmdError::with("failed to get capabilities", e))?;
            super::domain::with_newline(caps)
        }
        "domcapabilities" => {
            let request = GetDomainCapabilitiesRequest {
                emulator_bin: args.get("emulatorbin").unwrap_or_default().to_owned(),
                arch: args.get("arch").unwrap_or_default().to_owned(),
                machine: args.get("machine").unwrap_or_default().to_owned(),
                virttype: args.get("virttype").unwrap_or_default().to_owned(),
                flags: 0,
            };
            let caps = conn
                .domain_capabilities(request)
                .await
                .map_err(|e| CmdError::with("failed to get emulator capabilities", e))?;
            super::domain::with_newline(caps)
        }
        _ => {
            let info = conn
                .node_info()
                .await
                .map_err(|e| CmdError::with("failed to get node information", e))?;
            format::nodeinfo(&info)
        }
    };
    sh.print(&text);
    Ok(())
}
