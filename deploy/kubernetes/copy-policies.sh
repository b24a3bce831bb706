#!/bin/sh
# Copies the policy modules that base/library.yaml names
# (/etc/portcullis/policies/<file>.wasm, where the pods mount them) from SRC
# (the build output, target/wasm32-wasip1/policy) into DEST (base/policies,
# git-ignored), where base/kustomization.yaml's configMapGenerator reads
# them.
# Used by `make deploy-render` and by tests/tests/deploy.rs.
#
# usage: copy-policies.sh SRC DEST
set -eu

[ $# -eq 2 ] || {
    echo "usage: $0 SRC DEST" >&2
    exit 2
}
src=$1
dest=$2
here=$(cd "$(dirname "$0")" && pwd)
library=$here/base/library.yaml

modules=$(sed -n 's|^[[:space:]]*module:[[:space:]]*/etc/portcullis/policies/\([^[:space:]#/]*\).*$|\1|p' "$library")
[ -n "$modules" ] || {
    echo "$0: no module named in $library" >&2
    exit 1
}
mkdir -p "$dest"
rm -f "$dest"/*.wasm
for module in $modules; do
    [ -f "$src/$module" ] || {
        echo "$0: $src/$module is missing: run \`make policies\` first" >&2
        exit 1
    }
    cp "$src/$module" "$dest/$module"
done
