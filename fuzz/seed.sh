#!/bin/sh
# Seeds fuzz/corpus/<target>/ from the shared third-party corpus, which is
# read in place and never committed (fuzz/corpus is in fuzz/.gitignore).
#
#   fuzz/seed.sh [CORPUS_DIR]     default: <repo>/../shared/corpus
#
# review_parse: every AdmissionReview and AdmissionRequest file as it is,
#   and each bare request (pepr, kubewarden) also wrapped in a v1 envelope
#   so the fuzzer starts past the envelope checks.
# patch_build:  "before NUL after" pairs: oldObject/object of every UPDATE,
#   each object against itself, against a labelled copy, and against the
#   next file's object.
# Needs jq. Re-running replaces the seeds (not what the fuzzer added).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=${1:-$here/../../shared/corpus}
[ -d "$src" ] || { echo "seed.sh: no corpus at $src" >&2; exit 2; }
command -v jq >/dev/null || { echo "seed.sh: jq is required" >&2; exit 2; }

review=$here/corpus/review_parse
pairs=$here/corpus/patch_build
mkdir -p "$review" "$pairs"
rm -f "$review"/seed-* "$pairs"/seed-*

files=$(
    {
        find "$src/kube-apiserver-v1.36" -maxdepth 1 -name '*.json'
        find "$src/kubernetes-api/testdata" -name 'admission*.json'
        find "$src/kubewarden-controller" -name '*.json'
        find "$src/pepr" -name '*.json'
    } | sort
)

n=0
prev=
for f in $files; do
    n=$((n + 1))
    id=$(printf 'seed-%03d' "$n")
    cp "$f" "$review/$id"
    jq -e . "$f" >/dev/null 2>&1 || continue
    # A bare request (has uid, no kind): wrap it.
    if jq -e 'type == "object" and has("uid") and (has("kind") | not)' "$f" >/dev/null; then
        jq -c '{apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview", request: .}' "$f" \
            >"$review/$id-wrapped"
    fi
    # The object of a review or a bare request, or the document itself.
    obj=$(jq -c '(.request // .) | (.object // .oldObject // null)' "$f")
    [ "$obj" = null ] && obj=$(jq -c . "$f")
    old=$(jq -c '(.request // .) | (.oldObject // null)' "$f")
    if [ "$old" != null ]; then
        printf '%s\0%s' "$old" "$obj" >"$pairs/$id-update"
    fi
    printf '%s\0%s' "$obj" "$obj" >"$pairs/$id-same"
    printf '%s\0' "$obj" >"$pairs/$id-labelled"
    printf '%s' "$obj" | jq -c 'if type == "object" then .metadata.labels["portcullis.dev/managed"] = "true" | .metadata.annotations["a~b/c"] = "x" else . end' \
        >>"$pairs/$id-labelled"
    if [ -n "$prev" ]; then
        printf '%s\0%s' "$prev" "$obj" >"$pairs/$id-next"
    fi
    prev=$obj
done

echo "seeded $(ls "$review" | grep -c '^seed-') review_parse and $(ls "$pairs" | grep -c '^seed-') patch_build inputs from $src"
