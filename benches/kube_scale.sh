#!/usr/bin/env bash
# Scale benchmark for the Kubernetes source (see docs/kubernetes.md): the waypoint binary
# against the in-process fake API server holding 5,000 Services, 50,000 endpoints and pods,
# and 10,000 AuthorizationPolicies. Prints time to first ready, RSS, and how long one endpoint
# change and one policy change take to reach the data path.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
cargo build --locked --profile "$profile" -p waypoint -p waypoint-tests --bin waypoint --bin kube-scale
target="${CARGO_TARGET_DIR:-target}/$profile"
"$target/kube-scale" --waypoint-bin "$target/waypoint" "$@"
