#!/bin/sh
# On the server, once every node has joined: install Ambit, enrol the demo namespace, deploy the
# demo apps (the e2e scenarios' pods) and wait until all of it is ready. Re-running installs the
# image just built: the Ambit pods restart and the demo pods are recreated on it.
set -eu
IMAGE=${AMBIT_IMAGE:-ambit:0.1.0}
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
if ! command -v k3s >/dev/null; then
    echo "install: k3s is not provisioned on this node yet; nothing to install" >&2
    exit 0
fi
kubectl wait --for=condition=Ready nodes --all --timeout=300s

# `ambit install` renders the manifests from the same code the image runs. The VMs have 2 CPUs and
# 2 GiB: two ztunnel workers, and a memory request sized for them, so that a surge roll's second
# node pod still fits (docs/operations.md, "Memory requests"). k3s's containerd reads its CNI
# configuration and plugins from its own directories, not /etc/cni/net.d and /opt/cni/bin: the agent
# chains ambit-cni there, or the runtime never runs it.
docker run --rm "$IMAGE" python3 -m ambitctl.cli install --dry-run --image "$IMAGE" --ztunnel-workers 2 \
    --cni-conf-dir /var/lib/rancher/k3s/agent/etc/cni/net.d --cni-bin-dir /var/lib/rancher/k3s/data/cni \
    | kubectl apply --server-side --force-conflicts --field-manager=ambit -f -
kubectl -n ambit-system rollout restart deployment/ambit-controller daemonset/ambit-node
kubectl -n ambit-system rollout status deployment/ambit-controller --timeout=300s
kubectl -n ambit-system rollout status daemonset/ambit-node --timeout=300s

kubectl delete -f /ambit/vagrant/manifests/demo-apps.yaml --ignore-not-found --wait=true >/dev/null
kubectl apply -f /ambit/vagrant/manifests/demo-apps.yaml
kubectl wait -n demo --for=condition=Ready pods --all --timeout=300s
kubectl wait -n legacy --for=condition=Ready pods --all --timeout=300s
kubectl get pods -A -o wide
echo "ambit is installed; vagrant/cluster-test.sh runs the e2e scenarios against it"
