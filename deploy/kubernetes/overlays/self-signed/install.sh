#!/bin/sh
# Installs (or updates) Portcullis with a certificate made by `portcullis
# certs`, without cert-manager. Re-running it is safe: it reuses the CA in
# CERT_DIR, so a re-run rotates the serving certificate and keeps the CA,
# and so the webhook configurations' caBundle, unchanged.
#
# Order:
#   1. certificates: a CA and a serving certificate for
#      portcullis.portcullis.svc (a new CA only if CERT_DIR has none);
#   2. the Namespace, then the Secret portcullis-tls (`tls.crt`, `tls.key`,
#      `ca.crt`; created or updated) before the pods that mount it;
#   3. the custom resource definitions (the rendering's
#      CustomResourceDefinitions, applied on their own: `apply -l` resolves
#      every object's kind before it filters, and ClusterAdmissionPolicy is
#      unknown until they are served), then wait until they are served;
#   4. everything labelled portcullis.dev/phase=server (RBAC, ConfigMaps,
#      Deployment, Service, ...), then wait for the rollout. The controller
#      in those pods writes the two webhook configurations, with the
#      Secret's `ca.crt` as their caBundle;
#   5. the standard library's ClusterAdmissionPolicy resources
#      (portcullis.dev/phase=policies).
#
# Environment:
#   MANIFESTS   the rendered overlay (default: `kubectl kustomize` of this
#               directory; `make deploy-self-signed` passes
#               target/deploy/self-signed.yaml)
#   PORTCULLIS  the portcullis binary (default: target/release/portcullis)
#   CERT_DIR    where the CA and certificate are kept (default:
#               .portcullis/deploy-certs); keep ca.key safe
#   KUBECTL     kubectl to use (default: kubectl)
#   DAYS        validity of the serving certificate in days (default: 365)
#   ROLLOUT_TIMEOUT  how long to wait for the Deployment (default: 300s)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/target/release/portcullis}
KUBECTL=${KUBECTL:-kubectl}
CERT_DIR=${CERT_DIR:-$root/.portcullis/deploy-certs}
MANIFESTS=${MANIFESTS:-}
DAYS=${DAYS:-365}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-300s}
NAMESPACE=portcullis
SERVICE=portcullis

die() {
    echo "install.sh: $*" >&2
    exit 1
}

command -v "$KUBECTL" >/dev/null 2>&1 || die "$KUBECTL not found: install kubectl (or set KUBECTL)"
[ -x "$PORTCULLIS" ] || die "$PORTCULLIS not found: run \`make build\` (or set PORTCULLIS)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

if [ -z "$MANIFESTS" ]; then
    MANIFESTS=$work/manifests.yaml
    "$KUBECTL" kustomize "$here" >"$MANIFESTS"
fi
[ -f "$MANIFESTS" ] || die "$MANIFESTS: no such file"
# cert-manager's rendering issues the Secret itself: this script and
# cert-manager would keep replacing each other's certificate.
if grep -q '^kind: Certificate$' "$MANIFESTS"; then
    die "$MANIFESTS has cert-manager Certificates: render overlays/self-signed (or install overlays/cert-manager as docs/deploy.md says)"
fi
grep -q 'portcullis.dev/phase: crds' "$MANIFESTS" ||
    die "$MANIFESTS has no custom resource definitions (portcullis.dev/phase: crds): render overlays/self-signed"

# 1. Certificates.
mkdir -p "$CERT_DIR"
chmod 700 "$CERT_DIR"
set -- --dns "$SERVICE.$NAMESPACE.svc" --dns "$SERVICE.$NAMESPACE.svc.cluster.local" --days "$DAYS"
if [ -f "$CERT_DIR/ca.crt" ] && [ -f "$CERT_DIR/ca.key" ]; then
    echo "install.sh: signing a new serving certificate with the CA in $CERT_DIR"
    "$PORTCULLIS" certs --out "$work/certs" "$@" \
        --ca-cert "$CERT_DIR/ca.crt" --ca-key "$CERT_DIR/ca.key" >"$work/certs.out"
    cp "$work/certs/tls.crt" "$work/certs/tls.key" "$CERT_DIR/"
else
    echo "install.sh: making a new CA and serving certificate in $CERT_DIR"
    "$PORTCULLIS" certs --out "$CERT_DIR" "$@" >"$work/certs.out"
fi
[ -s "$CERT_DIR/ca.crt" ] || die "portcullis certs wrote no $CERT_DIR/ca.crt"

# 2. The Namespace and the TLS Secret (before the pods that mount it).
cat >"$work/namespace.yaml" <<NS
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
NS
"$KUBECTL" apply --server-side -f "$work/namespace.yaml"
"$KUBECTL" create secret generic portcullis-tls --namespace "$NAMESPACE" \
    --type kubernetes.io/tls \
    --from-file "tls.crt=$CERT_DIR/tls.crt" \
    --from-file "tls.key=$CERT_DIR/tls.key" \
    --from-file "ca.crt=$CERT_DIR/ca.crt" \
    --dry-run=client -o yaml >"$work/secret.yaml"
"$KUBECTL" apply --server-side --force-conflicts -f "$work/secret.yaml"

# 3. The custom resource definitions, served before anything names them.
awk '
    /^---[[:space:]]*$/ { if (crd) printf "%s---\n", doc; doc = ""; crd = 0; next }
    { doc = doc $0 "\n"; if ($0 == "kind: CustomResourceDefinition") crd = 1 }
    END { if (crd) printf "%s", doc }
' "$MANIFESTS" >"$work/crds.yaml"
grep -q '^kind: CustomResourceDefinition$' "$work/crds.yaml" ||
    die "$MANIFESTS has no CustomResourceDefinition: render overlays/self-signed"
"$KUBECTL" apply --server-side -f "$work/crds.yaml"
"$KUBECTL" wait --for condition=Established crd -l portcullis.dev/phase=crds --timeout 60s

# 4. The server and controller. Server-side apply: the policy ConfigMaps are
# too large for the last-applied-configuration annotation of a client-side
# apply.
"$KUBECTL" apply --server-side -f "$MANIFESTS" -l portcullis.dev/phase=server
"$KUBECTL" rollout status deployment/portcullis --namespace "$NAMESPACE" --timeout "$ROLLOUT_TIMEOUT"

# 5. The policies.
"$KUBECTL" apply --server-side -f "$MANIFESTS" -l portcullis.dev/phase=policies

echo "install.sh: Portcullis is serving; the controller registers the webhooks with the CA in $CERT_DIR/ca.crt"
