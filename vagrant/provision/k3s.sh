#!/bin/sh
# k3s from the cache: the pinned release's binary, its air-gap images (pause, CoreDNS, ...) and the
# install script are fetched once into $AMBIT_CACHE/k3s/$K3S_VERSION, checked against the release's
# checksums, and installed from there (INSTALL_K3S_SKIP_DOWNLOAD), so nodes pull no system image.
#   k3s.sh server   the control plane: flannel vxlan over the private network, no traefik/servicelb
#   k3s.sh agent    a worker: joins $SERVER_IP with the shared token
set -eu
# shellcheck source=SCRIPTDIR/lib.sh
. /ambit/vagrant/provision/lib.sh
role=${1:?usage: k3s.sh server|agent}
dir="$AMBIT_CACHE/k3s/$K3S_VERSION"
release="https://github.com/k3s-io/k3s/releases/download/$(printf %s "$K3S_VERSION" | sed 's/+/%2B/')"
images=k3s-airgap-images-amd64.tar.zst

fetch "$release/sha256sum-amd64.txt" "$dir/sha256sum-amd64.txt"
fetch "$release/k3s" "$dir/k3s"
fetch "$release/$images" "$dir/$images"
fetch https://get.k3s.io "$dir/install.sh"
if ! (cd "$dir" && grep -E " (k3s|$images)\$" sha256sum-amd64.txt | sha256sum -c --quiet -); then
    rm -f "$dir/k3s" "$dir/$images"
    echo "k3s: checksum mismatch for the cached k3s $K3S_VERSION files; removed them, provision again" >&2
    exit 1
fi

cmp -s "$dir/k3s" /usr/local/bin/k3s || install -m 0755 "$dir/k3s" /usr/local/bin/k3s
mkdir -p /var/lib/rancher/k3s/agent/images
cp -u "$dir/$images" /var/lib/rancher/k3s/agent/images/

case $role in
server)
    unit=k3s
    exec_args="server --node-ip $NODE_IP --advertise-address $NODE_IP --flannel-iface eth1 \
--flannel-backend vxlan --disable traefik --disable servicelb --write-kubeconfig-mode 0644" ;;
agent)
    unit=k3s-agent
    exec_args="agent --node-ip $NODE_IP --flannel-iface eth1"
    export K3S_URL="https://$SERVER_IP:6443" ;;
*)
    echo "k3s: role $role: expected server or agent" >&2
    exit 2 ;;
esac
if ! systemctl is-active -q "$unit"; then
    INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_VERSION="$K3S_VERSION" K3S_TOKEN="$K3S_TOKEN" \
        INSTALL_K3S_EXEC="$exec_args" sh "$dir/install.sh"
fi
if [ "$role" = server ]; then
    until kubectl get nodes >/dev/null 2>&1; do sleep 2; done
    kubectl wait --for=condition=Ready "node/$(hostname)" --timeout=300s
fi
say "k3s $K3S_VERSION $role running"
