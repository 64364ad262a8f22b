#!/usr/bin/env bash
# Installs everything Ambit needs on a Debian 12 machine, idempotently:
# apt packages, kernel-header links for bcc, and a venv at .venv that can import bcc.
# A second run installs nothing: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

APT_PKGS=(python3-bpfcc bpftool linux-headers-amd64 libbpf1 iproute2 iptables iperf3 curl
          tcpdump tshark python3-venv python3-dev gcc make procps psmisc
          stunnel4 haproxy wrk nghttp2-client bind9-dnsutils dnsmasq-base libnghttp2-dev nginx-light prometheus chromium chromium-driver
          vagrant vagrant-libvirt shellcheck)   # the last three: the checks of vagrant/ (tests/unit/vagrant)

if [ "$(id -u)" != 0 ]; then echo "setup must run as root (it installs apt packages and links kernel headers)" >&2; exit 1; fi

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# kubectl drives the e2e kube driver against the API-server emulator (tests/unit/vagrant). A kubectl
# already on PATH (a cloud SDK's, a newer one) is kept; else Debian's kubernetes-client provides it.
if ! command -v kubectl >/dev/null; then
  dpkg-query -W -f='${Status}' kubernetes-client 2>/dev/null | grep -q "install ok installed" || missing+=(kubernetes-client)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "apt packages: all present"
fi

# bcc compiles against /lib/modules/$(uname -r)/{build,source}. These machines run a kernel
# with no headers package, so link Debian's headers; networking programs only use stable UAPI.
kver=$(uname -r)
moddir=/lib/modules/$kver
if [ ! -e "$moddir/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
  if [ -z "$hdr" ] || [ -z "$common" ]; then echo "no Debian kernel headers found under /usr/src" >&2; exit 1; fi
  say "linking kernel headers for bcc: $moddir/build -> $hdr"
  mkdir -p "$moddir"
  ln -sfn "$hdr" "$moddir/build"
  [ -e "$moddir/source" ] || ln -sfn "$common" "$moddir/source"
else
  say "kernel headers for bcc: present"
fi

# The venv must be made from Debian's python3, the one python3-bpfcc is built for.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  say "creating .venv (system site packages, for bcc)"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.ambit-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import ambit' 2>/dev/null; then
  say "installing Python dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
else
  say "python dependencies: up to date"
fi
# Byte-compile the project, as `pip install` does in the image (deploy/Dockerfile). Without it, an
# environment that sets PYTHONDONTWRITEBYTECODE (or a read-only tree) compiles every module from
# source at each start: slower, and the compiler's garbage leaves each process ~0.7 MB more heap
# (a lab ztunnel: 42.7 -> 42.0 MB RSS). Up-to-date files are skipped, so this costs ~0.2 s.
.venv/bin/python -m compileall -q -j 0 ambit agent ztunnel waypoint controller ambitctl bench >/dev/null
say "ready: .venv/bin/ambit"
