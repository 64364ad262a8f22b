# Shared by the provision scripts (sourced): the download cache.
# shellcheck shell=sh
#
# $AMBIT_CACHE is vagrant/.cache on the host, synced in. `fetch URL FILE` downloads only when FILE
# is missing, through a .part file, so an interrupted download is never taken for a cached one;
# cache-pull.sh copies new files back to the host (it skips *.part).

say() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*"; }

fetch() {
    if [ -s "$2" ]; then
        say "cached: ${2#"$AMBIT_CACHE"/}"
        return 0
    fi
    say "fetching $1"
    mkdir -p "$(dirname "$2")"
    curl -fsSL --retry 3 -o "$2.part" "$1"
    mv "$2.part" "$2"
}

# A venv with Debian's python3 (the image's Python too) whose pip builds the wheelhouse.
WHEELS="$AMBIT_CACHE/wheels"
PIPVENV=${AMBIT_PIP_VENV:-/opt/ambit-pip}

# fill_wheels REQUIREMENTS_FILE: wheels for every requirement in $WHEELS, fetching only when the
# wheelhouse cannot satisfy them offline.
fill_wheels() {
    mkdir -p "$WHEELS"
    [ -x "$PIPVENV/bin/pip" ] || python3 -m venv "$PIPVENV"
    if "$PIPVENV/bin/pip" install -q --dry-run --ignore-installed --no-index --find-links "$WHEELS" \
            -r "$1" >/dev/null 2>&1; then
        say "wheels: all cached ($(wc -l <"$1") requirements)"
    else
        say "wheels: fetching what is missing"
        "$PIPVENV/bin/pip" wheel -q --find-links "$WHEELS" -w "$WHEELS" -r "$1"
    fi
}
