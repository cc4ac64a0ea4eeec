//! Tap devices for `<interface type='network'|'bridge'>`: opened on `/dev/net/tun`
//! (`TUNSETIFF`, `IFF_TAP | IFF_NO_PI`, plus `IFF_VNET_HDR` for virtio NICs), given the guest's
//! MAC with the first byte `0xFE` (so the bridge never takes the guest's address as its own),
//! enslaved to a bridge and brought up over rtnetlink.
//!
//! The tap is not persistent: it lives as long as a descriptor to it is open, so once QEMU
//! holds the only one, the device goes away when QEMU exits. Everything happens in the network
//! namespace the daemon runs in.

use std::ffi::CStr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, new_connection};
use tokio_stream::StreamExt as _;

/// The kernel-chosen name pattern libvirt uses for guest taps.
pub const DEFAULT_TEMPLATE: &str = "vnet%d";

/// Name prefixes libvirt reserves for generated devices: a `<target dev>` starting with one of
/// these is replaced by a fresh name at start.
const RESERVED_PREFIXES: &[&str] = &["vnet", "vif", "macvtap", "macvlan"];

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    /// The descriptor QEMU gets.
    pub fd: OwnedFd,
    /// The device name the kernel gave it.
    pub name: String,
}

/// The name to ask the kernel for: the user's `<target dev>` unless it uses a reserved prefix
/// (or is absent), else `vnet%d`.
pub fn requested_name(target_dev: Option<&str>) -> &str {
    match target_dev {
        Some(dev) if !dev.is_empty() && !RESERVED_PREFIXES.iter().any(|p| dev.starts_with(p)) => dev,
        _ => DEFAULT_TEMPLATE,
    }
}

/// The tap's MAC: the guest's with the first byte set to 0xFE, as libvirt does.
pub fn tap_mac(guest_mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = guest_mac.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    out[0] = 0xfe;
    Some(out)
}

/// Opens a new tap device named after `name` (`%d` lets the kernel pick the number).
pub fn open(name: &str, vnet_hdr: bool) -> std::io::Result<Tap> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{name}' is not a valid interface name"),
        ));
    }
    // SAFETY: the path is a NUL-terminated literal; the result is checked.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `ifreq` is plain old data: all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to an `ifreq`, which lives for the whole call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote a NUL-terminated name of at most IFNAMSIZ bytes; the buffer was
    // zeroed and is IFNAMSIZ long, so a terminator is always inside it.
    let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok(Tap { fd, name })
}

/// A netlink failure while plugging a tap.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}: {message}")]
pub struct PlugError {
    /// What was being done.
    pub what: String,
    /// The cause.
    pub message: String,
}

fn plug_error(what: impl Into<String>, e: rtnetlink::Error) -> PlugError {
    let message = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    };
    PlugError {
        what: what.into(),
        message,
    }
}

fn link_name(message: &LinkMessage) -> Option<&str> {
    message.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, PlugError> {
    let mut stream = Box::pin(handle.link().get().execute());
    while let Some(item) = stream.next().await {
        let message = item.map_err(|e| plug_error("list network interfaces", e))?;
        if link_name(&message) == Some(name) {
            return Ok(Some(message.header.index));
        }
    }
    Ok(None)
}

/// Gives tap `name` its MAC, enslaves it to `bridge` and brings it up.
pub async fn plug(name: &str, mac: [u8; 6], bridge: &str) -> Result<(), PlugError> {
    let (connection, handle, _) = new_connection().map_err(|e| PlugError {
        what: "open a netlink socket".into(),
        message: e.to_string(),
    })?;
    let task = tokio::spawn(connection);
    let result = async {
        let bridge_index = index_of(&handle, bridge).await?.ok_or_else(|| PlugError {
            what: format!("attach {name} to bridge '{bridge}'"),
            message: "no such bridge".into(),
        })?;
        let index = index_of(&handle, name).await?.ok_or_else(|| PlugError {
            what: format!("find tap device {name}"),
            message: "it vanished after being created".into(),
        })?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).address(mac.to_vec()).build())
            .execute()
            .await
            .map_err(|e| plug_error(format!("set the MAC address of {name}"), e))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(bridge_index).build())
            .execute()
            .await
            .map_err(|e| plug_error(format!("attach {name} to bridge '{bridge}'"), e))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| plug_error(format!("bring {name} up"), e))
    }
    .await;
    task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_mac_sets_the_first_byte_to_fe() {
        assert_eq!(
            tap_mac("52:54:00:12:34:56"),
            Some([0xfe, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(tap_mac("52:54:00:12:34"), None);
        assert_eq!(tap_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(tap_mac("52:54:00:12:34:zz"), None);
    }

    #[test]
    fn reserved_or_missing_target_names_get_vnet() {
        assert_eq!(requested_name(None), "vnet%d");
        assert_eq!(requested_name(Some("vnet3")), "vnet%d");
        assert_eq!(requested_name(Some("macvtap0")), "vnet%d");
        assert_eq!(requested_name(Some("mytap0")), "mytap0");
    }

    #[test]
    fn overlong_names_are_refused_before_the_kernel_sees_them() {
        let e = open("a-name-that-is-far-too-long", false).expect_err("too long");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }
}
