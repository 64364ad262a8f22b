#!/bin/sh
# The server runs tests/e2e with the kube driver (kubectl is k3s's): a venv with pytest, from the
# wheelhouse in the cache.
set -eu
# shellcheck source=SCRIPTDIR/lib.sh
. /ambit/vagrant/provision/lib.sh
VENV=/opt/ambit-e2e
reqs=$(mktemp)
python3 /ambit/vagrant/provision/requirements.py e2e >"$reqs"
fill_wheels "$reqs"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" -r "$reqs"
rm -f "$reqs"
say "e2e venv: $("$VENV/bin/python" -m pytest --version 2>&1)"
