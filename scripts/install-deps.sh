#!/usr/bin/env bash
# Installs the system packages rvirt's tests need (Debian 12 "bookworm" machines).
#
# qemu-utils 10.0 on these machines comes from bookworm-backports, so qemu-system-x86 must come
# from there as well (bookworm's own 7.2 conflicts with it). The backports suite is derived from
# the stanza already present in /etc/apt/sources.list.d/debian.sources.
#
# Idempotent and quick when everything is already installed.
set -euo pipefail

# python3-grpcio, python3-grpc-tools: the example Python client and its test (python_client.rs);
# bookworm's grpc_tools bundles protoc 3.5, too old for proto3 `optional`, so libclient/examples/
# python/gen.sh uses protobuf-compiler (protoc 3.21) with grpc_python_plugin (protobuf-compiler-grpc).
packages=(qemu-system-x86 qemu-utils libxml2-utils dnsmasq-base nftables iproute2 lvm2 socat busybox
    python3-grpcio python3-grpc-tools protobuf-compiler protobuf-compiler-grpc)
backported=(qemu-system-x86 qemu-utils)

# isc-dhcp-client: `dhclient -6`, the DHCPv6 client of the IPv6 network test (networks.rs).
packages+=(isc-dhcp-client)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all packages present"
    exit 0
fi
echo "install-deps: installing ${missing[*]}"

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

src=/etc/apt/sources.list.d/debian.sources
bpo=/etc/apt/sources.list.d/rvirt-bookworm-backports.sources
if [ -f "$src" ] && [ ! -f "$bpo" ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Take the first stanza whose Suites line names plain "bookworm" and change its suite.
    awk -v RS= -v ORS='\n\n' '/Suites:[^\n]*bookworm( |$|\n)/ && !done { print; done=1 }' "$src" \
        | sed -E 's/^Suites:.*/Suites: bookworm-backports/' | $SUDO tee "$bpo" >/dev/null
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
plain=()
for p in "${missing[@]}"; do
    skip=
    for b in "${backported[@]}"; do [ "$p" = "$b" ] && skip=1; done
    [ -z "$skip" ] && plain+=("$p")
done
need_bpo=()
for p in "${missing[@]}"; do
    for b in "${backported[@]}"; do [ "$p" = "$b" ] && need_bpo+=("$p"); done
done
if [ ${#need_bpo[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports "${need_bpo[@]}"
fi
if [ ${#plain[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${plain[@]}"
fi
echo "install-deps: done"
