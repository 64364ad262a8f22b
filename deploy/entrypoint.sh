#!/bin/sh
# The agent container's entrypoint: prepare what only the node can tell, then exec "$@".
#
# 1. Kernel headers for bcc, for the *host's* kernel release (containers share the host kernel).
#    bcc compiles against /lib/modules/$(uname -r)/build. The host's /lib/modules and /usr/src are
#    mounted read-only at /host/lib/modules and /host/usr/src; the container's own /lib/modules is
#    writable. If the host has headers for its kernel, /lib/modules/<release>/{build,source} point at
#    them (re-rooted under /host); otherwise at the Debian headers in the image, as scripts/setup.sh
#    does on a machine: networking programs need only stable UAPI headers.
#    Host modules are linked too, so modprobe (iptables mode) finds them.
# 2. If AMBIT_ZTUNNEL_POD_UID is set (the DaemonSet sets it to this pod's UID), append
#    `--ztunnel-cgroup <this pod's cgroup>`: the agent attaches the SO_ORIGINAL_DST program there,
#    and only the host's cgroup tree knows where that is.
#
# Paths can be overridden (AMBIT_HOST_ROOT, AMBIT_MODULES_DIR, AMBIT_IMAGE_HEADERS, AMBIT_KERNEL_RELEASE,
# AMBIT_CGROUP_ROOT) so tests run this script against fixture trees.
set -eu

host=${AMBIT_HOST_ROOT:-/host}
modules=${AMBIT_MODULES_DIR:-/lib/modules}
image_headers=${AMBIT_IMAGE_HEADERS:-/opt/ambit/kernel-headers}
kver=${AMBIT_KERNEL_RELEASE:-$(uname -r)}
say() { echo "entrypoint: $*" >&2; }

# A host symlink like /usr/src/linux-headers-X, seen from here: under $host.
host_path() {
    target=$(readlink "$1") || return 1
    case "$target" in
        /*) echo "$host$target" ;;
        *) echo "$(dirname "$1")/$target" ;;
    esac
}

link_headers() {
    dir="$modules/$kver"
    hostdir="$host/lib/modules/$kver"
    mkdir -p "$dir"
    if [ -d "$hostdir" ]; then
        for e in "$hostdir"/*; do
            [ -e "$e" ] || [ -L "$e" ] || continue
            name=$(basename "$e")
            case "$name" in build|source) continue ;; esac
            [ -e "$dir/$name" ] || ln -s "$e" "$dir/$name"
        done
    fi
    for which in build source; do
        src=""
        if [ -L "$hostdir/$which" ]; then
            src=$(host_path "$hostdir/$which")
        elif [ -d "$hostdir/$which" ]; then
            src="$hostdir/$which"
        fi
        if [ -n "$src" ] && [ -d "$src/include" ]; then
            ln -sfn "$src" "$dir/$which"
            say "kernel $kver: $which -> host headers $src"
            continue
        fi
        if [ "$which" = build ]; then
            pick=$(ls -d "$image_headers"/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
        else
            pick=$(ls -d "$image_headers"/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
        fi
        if [ -z "$pick" ]; then
            say "kernel $kver: no host headers and no image headers for $which"
            exit 1
        fi
        ln -sfn "$pick" "$dir/$which"
        say "kernel $kver: $which -> image headers $pick (host has none)"
    done
}

link_headers

pod_cgroup() {
    if [ -n "${AMBIT_CGROUP_ROOT:-}" ]; then
        python3 -m agent.kube_pods pod-cgroup "$1" --cgroup-root "$AMBIT_CGROUP_ROOT"
    else
        python3 -m agent.kube_pods pod-cgroup "$1"
    fi
}

if [ -n "${AMBIT_ZTUNNEL_POD_UID:-}" ]; then
    cg=""
    tries=${AMBIT_CGROUP_TRIES:-10}
    while [ "$tries" -gt 0 ]; do
        if cg=$(pod_cgroup "$AMBIT_ZTUNNEL_POD_UID" 2>/dev/null); then
            break
        fi
        cg=""
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] && sleep 1
    done
    if [ -z "$cg" ]; then
        pod_cgroup "$AMBIT_ZTUNNEL_POD_UID" || true
        say "cannot find this pod's cgroup (is the host's cgroup v2 tree mounted at /sys/fs/cgroup?)"
        exit 1
    fi
    set -- "$@" --ztunnel-cgroup "$cg"
fi

exec "$@"
