#!/bin/sh
# Every node: packages, and the kernel settings k3s and Ambit need. Idempotent.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends curl ca-certificates iptables docker.io >/dev/null

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
