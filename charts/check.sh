#!/usr/bin/env bash
# The Helm chart's checks (`make chart`), or with --update the golden files (`make chart-golden`):
#   1. Chart.yaml's version and appVersion, and the default image tag, equal the waypoint crate's
#      version;
#   2. `helm lint --strict` with every values file of charts/waypoint/ci/;
#   3. `helm template` of each of them equals its golden file in ci/golden/ (a diff otherwise);
#   4. the rendered core kinds against Kubernetes' own schemas (kubernetes-validate --strict); the
#      Gateway API kinds are checked against their CRD schema by tests/tests/chart.rs instead, which
#      also checks every pod against the `restricted` Pod Security Standard;
#   5. every file of ci/invalid/ is refused by values.schema.json with the message its first
#      line (`# expect: ...`) names.
# helm and kubernetes-validate come from .ci/deps.sh (group test), in $WAYPOINT_TOOLS/bin.
set -euo pipefail
cd "$(dirname "$0")/.."

update=false
[ "${1:-}" = "--update" ] && update=true

tools=${WAYPOINT_TOOLS:-$HOME/.cache/waypoint-tools}/bin
helm=${HELM:-$tools/helm}
validate=${KUBERNETES_VALIDATE:-$tools/kubernetes-validate}
# The oldest Kubernetes the chart supports that kubernetes-validate 1.37 still carries schemas for
# (Chart.yaml's kubeVersion says >= 1.28; 1.30 is the oldest release still widely run).
kube_version=1.30.0
chart=charts/waypoint
# Fixed so the golden files do not depend on who renders them.
release=waypoint
namespace=demo

for tool in "$helm" "$validate"; do
  [ -x "$tool" ] || { echo "chart: $tool is missing; run make deps" >&2; exit 1; }
done

fail() { echo "chart: $*" >&2; exit 1; }

# 1. Versions.
crate_version=$(cargo pkgid --offline -p waypoint | sed 's/.*[#@]//')
chart_version=$(sed -n 's/^version: *//p' "$chart/Chart.yaml")
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")
image_tag=$(sed -n '/^image:/,/^[^ ]/s/^  tag: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/values.yaml")
[ "$chart_version" = "$crate_version" ] ||
  fail "Chart.yaml version $chart_version is not the waypoint crate's $crate_version"
[ "$app_version" = "$crate_version" ] ||
  fail "Chart.yaml appVersion $app_version is not the waypoint crate's $crate_version"
[ "$image_tag" = "$crate_version" ] ||
  fail "values.yaml image.tag $image_tag is not the waypoint crate's $crate_version"
echo "chart: version $crate_version (crate, chart, appVersion, image tag)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cases=()
for values in "$chart"/ci/*-values.yaml; do
  cases+=("$(basename "$values" -values.yaml)")
done
[ ${#cases[@]} -gt 0 ] || fail "no values files in $chart/ci/"

mismatch=false
for case in "${cases[@]}"; do
  values=$chart/ci/$case-values.yaml
  golden=$chart/ci/golden/$case.yaml

  # 2. Lint.
  "$helm" lint --strict --quiet --namespace "$namespace" -f "$values" "$chart" >"$work/lint" 2>&1 ||
    { cat "$work/lint" >&2; fail "helm lint --strict failed with $values"; }

  # 3. Golden output.
  "$helm" template "$release" "$chart" --namespace "$namespace" -f "$values" >"$work/$case.yaml"
  if $update; then
    mkdir -p "$(dirname "$golden")"
    cp "$work/$case.yaml" "$golden"
    echo "chart: wrote $golden"
  elif ! diff -u "$golden" "$work/$case.yaml" >"$work/diff"; then
    cat "$work/diff"
    echo "chart: helm template with $values differs from $golden (above);" \
      "if the change is intended, run make chart-golden and commit the result" >&2
    mismatch=true
  fi

  # 4. Kubernetes' schemas. Unknown kinds only warn in kubernetes-validate, so every line must be
  # a pass, or the warning for one of the two Gateway API kinds (validated by tests/tests/chart.rs).
  "$validate" --strict -k "$kube_version" "$work/$case.yaml" >"$work/validate" 2>&1 ||
    { cat "$work/validate" >&2; fail "kubernetes-validate refused the objects of $values"; }
  if grep -v -E "passed for resource |Couldn't find schema for kind (Gateway|GatewayClass) with api version gateway\.networking\.k8s\.io/v1 " \
    "$work/validate" >"$work/unexpected"; then
    cat "$work/unexpected" >&2
    fail "kubernetes-validate could not check every core object of $values (above)"
  fi
  echo "chart: $case: lint, template and $(grep -c 'passed for resource' "$work/validate") core objects valid (Kubernetes $kube_version)"
done
$mismatch && fail "golden files out of date"

# 5. The schema refuses bad values, saying why.
for bad in "$chart"/ci/invalid/*.yaml; do
  expect=$(sed -n '1s/^# expect: //p' "$bad")
  [ -n "$expect" ] || fail "$bad has no '# expect: <message>' first line"
  if "$helm" template "$release" "$chart" --namespace "$namespace" -f "$bad" >/dev/null 2>"$work/err"; then
    fail "$bad was accepted; values.schema.json should refuse it with: $expect"
  fi
  grep -q -F -- "$expect" "$work/err" ||
    { cat "$work/err" >&2; fail "$bad was refused, but not with: $expect"; }
done
echo "chart: values.schema.json refuses all $(find "$chart/ci/invalid" -name '*.yaml' | wc -l) files of $chart/ci/invalid with their message"
