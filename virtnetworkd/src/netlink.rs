//! The one place rvirt talks rtnetlink (the crate's API moves fast: it is pinned in the
//! workspace and wrapped here): list links, create a bridge with its MAC, MTU, STP, forward delay,
//! IPv6 settings (`/proc/sys/net/ipv6/conf/BRIDGE`) and addresses, bring it up, delete a link.
//! Everything happens in the network namespace the daemon runs in.

use std::net::IpAddr;

use rtnetlink::packet_route::link::{BridgeStpState, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, new_connection};
use tokio_stream::StreamExt as _;

/// A netlink failure, with the errno when the kernel gave one.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct NetlinkError {
    /// What was being done.
    pub what: String,
    /// The error.
    pub message: String,
    /// The kernel's errno (positive), if any.
    pub errno: Option<i32>,
}

fn error(what: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
    let errno = match &e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    };
    let message = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    };
    NetlinkError {
        what: what.into(),
        message,
        errno,
    }
}

/// What a bridge is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Device name.
    pub name: String,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Spanning tree on.
    pub stp: bool,
    /// Forward delay in seconds.
    pub delay: u64,
    /// Addresses with their prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// IPv6 on the bridge (the network has an IPv6 address); else it is disabled.
    pub ipv6: bool,
}

fn connect() -> Result<Handle, NetlinkError> {
    let (connection, handle, _) = new_connection().map_err(|e| NetlinkError {
        what: "open a netlink socket".into(),
        message: e.to_string(),
        errno: e.raw_os_error(),
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

fn link_name(message: &LinkMessage) -> Option<&str> {
    message.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

async fn links(handle: &Handle) -> Result<Vec<(u32, String)>, NetlinkError> {
    let mut stream = Box::pin(handle.link().get().execute());
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let message = item.map_err(|e| error("list network interfaces", e))?;
        if let Some(name) = link_name(&message) {
            out.push((message.header.index, name.to_owned()));
        }
    }
    Ok(out)
}

/// The names of every network interface.
pub async fn link_names() -> Result<Vec<String>, NetlinkError> {
    let handle = connect()?;
    Ok(links(&handle).await?.into_iter().map(|(_, n)| n).collect())
}

/// The index of interface `name`, if it exists.
pub async fn link_index(name: &str) -> Result<Option<u32>, NetlinkError> {
    let handle = connect()?;
    Ok(links(&handle)
        .await?
        .into_iter()
        .find(|(_, n)| n == name)
        .map(|(i, _)| i))
}

/// Creates the bridge, gives it its addresses and brings it up. On failure the half-built
/// bridge is removed.
pub async fn create_bridge(spec: &BridgeSpec) -> Result<(), NetlinkError> {
    let handle = connect()?;
    // The forward delay is applied before STP is turned on (the kernel processes it first), so
    // libvirt's default of STP on with a delay of 0 is accepted.
    let delay = u32::try_from(spec.delay.saturating_mul(100)).unwrap_or(u32::MAX);
    let mut builder = LinkBridge::new(&spec.name)
        .down()
        .forward_delay(delay)
        .stp_state(if spec.stp {
            BridgeStpState::KernelStp
        } else {
            BridgeStpState::Disabled
        });
    if let Some(mac) = spec.mac {
        builder = builder.address(mac.to_vec());
    }
    if let Some(mtu) = spec.mtu {
        builder = builder.mtu(mtu);
    }
    handle
        .link()
        .add(builder.build())
        .execute()
        .await
        .map_err(|e| error(format!("create bridge {}", spec.name), e))?;
    let result = configure(&handle, spec).await;
    if result.is_err() {
        let _ = delete_link(&spec.name).await;
    }
    result
}

async fn configure(handle: &Handle, spec: &BridgeSpec) -> Result<(), NetlinkError> {
    let index = links(handle)
        .await?
        .into_iter()
        .find(|(_, n)| *n == spec.name)
        .map(|(i, _)| i)
        .ok_or_else(|| NetlinkError {
            what: format!("find bridge {}", spec.name),
            message: "it vanished after being created".into(),
            errno: None,
        })?;
    ipv6_sysctls(&spec.name, spec.ipv6)?;
    for (addr, prefix) in &spec.addresses {
        handle
            .address()
            .add(index, *addr, *prefix)
            .execute()
            .await
            .map_err(|e| error(format!("add address {addr}/{prefix} to {}", spec.name), e))?;
    }
    let up = rtnetlink::LinkUnspec::new_with_index(index).up().build();
    handle
        .link()
        .set(up)
        .execute()
        .await
        .map_err(|e| error(format!("bring {} up", spec.name), e))
}

/// The bridge's IPv6 settings, as libvirt makes them: IPv6 on only when the network uses it;
/// never accepting router advertisements (a guest must not configure the host) nor
/// autoconfiguring (the bridge is the guests' router).
fn ipv6_sysctls(name: &str, enable: bool) -> Result<(), NetlinkError> {
    let dir = std::path::Path::new("/proc/sys/net/ipv6/conf").join(name);
    if !dir.exists() {
        // The kernel has IPv6 off: nothing to set (an IPv6 address fails when it is added).
        return Ok(());
    }
    for (key, value) in [
        ("disable_ipv6", if enable { "0" } else { "1" }),
        ("accept_ra", "0"),
        ("autoconf", "0"),
    ] {
        std::fs::write(dir.join(key), value).map_err(|e| NetlinkError {
            what: format!("set net.ipv6.conf.{name}.{key}"),
            message: e.to_string(),
            errno: e.raw_os_error(),
        })?;
    }
    Ok(())
}

/// Deletes interface `name`; a missing interface is not an error.
pub async fn delete_link(name: &str) -> Result<(), NetlinkError> {
    let handle = connect()?;
    let Some(index) = links(&handle)
        .await?
        .into_iter()
        .find(|(_, n)| n == name)
        .map(|(i, _)| i)
    else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = error(format!("delete {name}"), e);
            if e.errno == Some(libc::ENODEV) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}
