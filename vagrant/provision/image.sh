#!/bin/sh
# Build the Ambit image from the synced working tree and import it into k3s's containerd, so pods
# with imagePullPolicy IfNotPresent find it without a registry. Every node builds its own copy.
# The base image and the wheels come from the cache: the build itself reaches only the apt mirrors
# (pip inside it reads a wheelhouse served on the node's loopback).
set -eu
# shellcheck source=SCRIPTDIR/lib.sh
. /ambit/vagrant/provision/lib.sh
IMAGE=${AMBIT_IMAGE:-ambit:0.1.0}
cd /ambit

base=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' deploy/Dockerfile | head -1)
saved="$AMBIT_CACHE/images/$(printf %s "$base" | tr '/:' '__').tar"
if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ -s "$saved" ]; then
        say "base image $base from the cache"
        docker load -q -i "$saved"
    else
        docker pull -q "$base"
    fi
fi
if [ ! -s "$saved" ]; then
    mkdir -p "$(dirname "$saved")"
    docker save -o "$saved.part" "$base" && mv "$saved.part" "$saved"
fi

reqs=$(mktemp)
python3 /ambit/vagrant/provision/requirements.py image >"$reqs"
fill_wheels "$reqs"
rm -f "$reqs"
port=8765
python3 -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
until curl -fs "http://127.0.0.1:$port/" >/dev/null; do sleep 0.2; done

docker build -q --network host --build-arg PIP_NO_INDEX=1 \
    --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/" -f deploy/Dockerfile -t "$IMAGE" .
docker save "$IMAGE" | k3s ctr images import -
k3s ctr images ls -q | grep -q "${IMAGE#*/}" && say "image: $IMAGE imported into k3s"
