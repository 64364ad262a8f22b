#!/bin/sh
# Build the Ambit image from the synced repository and import it into k3s's containerd, so pods
# with imagePullPolicy IfNotPresent find it without a registry. Every node builds its own copy.
set -eu
IMAGE=${AMBIT_IMAGE:-ambit:0.1.0}
cd /ambit
docker build -q -f deploy/Dockerfile -t "$IMAGE" .
docker save "$IMAGE" | k3s ctr images import -
k3s ctr images ls -q | grep -q "${IMAGE#*/}" && echo "image: $IMAGE imported into k3s"
