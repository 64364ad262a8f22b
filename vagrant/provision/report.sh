#!/bin/sh
# On the server, after a failed cluster run: a tar.gz on stdout of what a bug report needs: nodes,
# pods, events, the Ambit resources, and every container log in ambit-system, demo and legacy.
# (`ambit bug-report` collects a lab's; this is its counterpart for the cluster.)
set -eu
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
k() { kubectl "$@" 2>&1 || true; }
k version >"$out/version.txt"
k get nodes -o wide >"$out/nodes.txt"
k get pods -A -o wide >"$out/pods.txt"
k get events -A --sort-by=.lastTimestamp >"$out/events.txt"
k get namespaces --show-labels >"$out/namespaces.txt"
k get -A authorizationpolicies.security.ambit.io,peerauthentications.security.ambit.io -o yaml >"$out/policies.yaml"
for ns in ambit-system demo legacy; do
    for pod in $(kubectl get pods -n "$ns" -o name 2>/dev/null); do
        for c in $(kubectl get -n "$ns" "$pod" -o jsonpath='{.spec.containers[*].name}'); do
            k logs -n "$ns" "$pod" -c "$c" >"$out/logs-$ns-${pod#pod/}-$c.txt"
        done
    done
done
[ -d /tmp/ambit-test-artifacts ] && cp -r /tmp/ambit-test-artifacts "$out/test-artifacts"
tar -C "$out" -czf - .
