#!/bin/sh
# The control plane: k3s with flannel (vxlan over the private network), no traefik, no servicelb.
set -eu
if ! systemctl is-active -q k3s; then
    curl -sfL https://get.k3s.io | K3S_TOKEN="$K3S_TOKEN" INSTALL_K3S_EXEC="server \
        --node-ip $NODE_IP --advertise-address $NODE_IP --flannel-iface eth1 --flannel-backend vxlan \
        --disable traefik --disable servicelb --write-kubeconfig-mode 0644" sh -
fi
until kubectl get nodes >/dev/null 2>&1; do sleep 2; done
kubectl wait --for=condition=Ready "node/$(hostname)" --timeout=300s
