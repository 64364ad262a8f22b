#!/bin/sh
# A worker: joins the server with the shared token.
set -eu
if ! systemctl is-active -q k3s-agent; then
    curl -sfL https://get.k3s.io | K3S_URL="https://$SERVER_IP:6443" K3S_TOKEN="$K3S_TOKEN" \
        INSTALL_K3S_EXEC="agent --node-ip $NODE_IP --flannel-iface eth1" sh -
fi
