#!/bin/sh
# Every node: packages, and the kernel settings k3s and Ambit need. Idempotent; after the first run
# it installs nothing (the apt mirrors are the only network it may need).
set -eu
# shellcheck source=SCRIPTDIR/lib.sh
. /ambit/vagrant/provision/lib.sh
PKGS="curl ca-certificates iptables docker.io python3-venv zstd"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Ambit needs the unified cgroup v2 hierarchy (Debian 12's default) and a bpf filesystem.
if [ "$(stat -fc %T /sys/fs/cgroup)" != "cgroup2fs" ]; then
    echo "common: /sys/fs/cgroup is not cgroup v2; Ambit needs the unified hierarchy" >&2
    exit 1
fi
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

cat >/etc/sysctl.d/90-ambit.conf <<CONF
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
CONF
modprobe br_netfilter
sysctl -q --system
