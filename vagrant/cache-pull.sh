#!/usr/bin/env bash
# Copy what NODE downloaded into its cache (/var/cache/ambit-lab) back to vagrant/.cache on the
# host, only the files the host lacks; the next `vagrant up` syncs them into every VM.
# Run by the Vagrantfile's triggers after `up` and `provision`.
set -euo pipefail
cd "$(dirname "$0")"
node=${1:?usage: cache-pull.sh NODE}
remote=/var/cache/ambit-lab
mkdir -p .cache
cfg=$(mktemp)
trap 'rm -f "$cfg"' EXIT
if ! vagrant ssh-config "$node" >"$cfg" 2>/dev/null; then
    echo "cache-pull: $node is not running; nothing to copy"
    exit 0
fi
# Plain ssh, not `vagrant ssh -c`: a binary tar stream must not go through a terminal.
theirs=$(ssh -F "$cfg" "$node" "cd $remote 2>/dev/null && sudo find . -type f ! -name '*.part' | sort")
ours=$(cd .cache && find . -type f ! -name '*.part' | sort)
missing=$(comm -13 <(printf '%s\n' "$ours") <(printf '%s\n' "$theirs") | sed '/^$/d')
if [ -z "$missing" ]; then
    echo "cache-pull: vagrant/.cache already has everything $node fetched"
    exit 0
fi
echo "cache-pull: copying $(printf '%s\n' "$missing" | wc -l) new file(s) from $node"
printf '%s\n' "$missing" | ssh -F "$cfg" "$node" "cd $remote && sudo tar -cf - -T -" | tar -C .cache -xf -
