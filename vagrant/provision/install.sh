#!/bin/sh
# On the server, once every node has joined: install Ambit, enrol the demo namespace, deploy the
# demo apps (the e2e scenarios' pods) and wait until all of it is ready. Re-running is harmless.
set -eu
IMAGE=${AMBIT_IMAGE:-ambit:0.1.0}
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
kubectl wait --for=condition=Ready nodes --all --timeout=300s

# `ambit install` renders the manifests from the same code the image runs.
docker run --rm "$IMAGE" python3 -m ambitctl.cli install --dry-run --image "$IMAGE" \
    | kubectl apply --server-side --field-manager=ambit -f -
kubectl -n ambit-system rollout status deployment/ambit-controller --timeout=300s
kubectl -n ambit-system rollout status daemonset/ambit-node --timeout=300s

kubectl apply -f /ambit/vagrant/manifests/demo-apps.yaml
kubectl label namespace demo ambit.io/dataplane-mode=ambient --overwrite
kubectl wait -n demo --for=condition=Ready pods --all --timeout=300s
kubectl wait -n legacy --for=condition=Ready pods --all --timeout=300s
kubectl get pods -A -o wide
echo "ambit is installed; run the e2e scenarios as vagrant/README.md says"
