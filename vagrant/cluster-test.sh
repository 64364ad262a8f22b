#!/usr/bin/env bash
# One command from a working tree to a verdict on a real cluster (make cluster-test):
#   1. brings the three VMs up (or, when they run, re-syncs this working tree into them),
#   2. provisions them: k3s, the Ambit image built from this tree, the e2e venv (cached downloads),
#      and installs Ambit and the scenarios' pods (the Vagrantfile's trigger runs provision/install.sh),
#   3. runs tests/e2e on ambit-cp with the kube driver and prints pytest's summary, as the lab run does,
#   4. on failure, saves what a bug report needs to vagrant/.reports/,
#   5. leaves the cluster up (or destroys it with --destroy).
# Exit status: pytest's (0 when every scenario passed).
set -euo pipefail
usage() {
    cat <<USAGE
usage: vagrant/cluster-test.sh [--provider libvirt|virtualbox] [--destroy] [-- PYTEST_ARGS...]
  --provider P   the Vagrant provider for new VMs (default: \$VAGRANT_DEFAULT_PROVIDER, else Vagrant's)
  --destroy      destroy the VMs afterwards (default: leave them up for exploration)
  PYTEST_ARGS    passed to pytest on ambit-cp, e.g. -- -k opted_out -x
USAGE
}
provider=${VAGRANT_DEFAULT_PROVIDER:-}
destroy=0
pytest_args=()
while [ $# -gt 0 ]; do
    case $1 in
    --provider) provider=${2:?--provider needs libvirt or virtualbox}; shift 2 ;;
    --provider=*) provider=${1#*=}; shift ;;
    --destroy) destroy=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) echo "cluster-test: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case $provider in
""|libvirt|virtualbox) ;;
*) echo "cluster-test: provider $provider: expected libvirt or virtualbox" >&2; exit 2 ;;
esac
command -v vagrant >/dev/null || { echo "cluster-test: vagrant is not installed (see vagrant/README.md)" >&2; exit 2; }
cd "$(dirname "$0")"
say() { printf '\033[1;34m[cluster-test]\033[0m %s\n' "$*"; }

if [ "$destroy" = 1 ]; then
    trap 'say "destroying the VMs (--destroy)"; vagrant destroy -f' EXIT
fi

running=$(vagrant status --machine-readable | awk -F, '$3 == "state" && $4 == "running"' | wc -l)
if [ "$running" -eq 3 ]; then
    say "the cluster is up: syncing this working tree and provisioning again"
    vagrant rsync
    vagrant provision
else
    say "bringing the cluster up${provider:+ with $provider} (the first time ~15 min)"
    # In order: the server first, the install trigger after the last worker.
    vagrant up --no-parallel ${provider:+--provider "$provider"}
    if [ "$running" -gt 0 ]; then
        # Machines that were already running were not provisioned by `up`.
        vagrant rsync
        vagrant provision
    fi
fi

cfg=$(mktemp)
vagrant ssh-config ambit-cp >"$cfg"
say "running tests/e2e on ambit-cp with the kube driver"
quoted=""
[ ${#pytest_args[@]} -eq 0 ] || quoted=$(printf ' %q' "${pytest_args[@]}")
set +e
ssh -F "$cfg" ambit-cp "cd /ambit && sudo AMBIT_E2E_DRIVER=kube KUBECONFIG=/etc/rancher/k3s/k3s.yaml \
    AMBIT_TEST_ARTIFACTS=/tmp/ambit-test-artifacts /opt/ambit-e2e/bin/python -m pytest tests/e2e -q \
    -p no:cacheprovider$quoted"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    mkdir -p .reports
    report=.reports/cluster-$(date -u +%Y%m%dT%H%M%SZ).tar.gz
    ssh -F "$cfg" ambit-cp "sudo sh /ambit/vagrant/provision/report.sh" >"$report" || true
    say "e2e failed (exit $rc); the cluster's state and logs: vagrant/$report (see vagrant/README.md)"
else
    say "e2e passed on the cluster"
fi
rm -f "$cfg"
[ "$destroy" = 1 ] || say "the cluster stays up: cd vagrant && vagrant ssh ambit-cp; vagrant destroy -f to remove it"
exit "$rc"
