#!/usr/bin/env bash
# Load benchmark: direct -> nginx proxy -> waypoint, back to back in every repetition, as
# docs/performance.md describes. Needs nginx, oha (cargo install oha --locked) and
# taskset; prints ratios, CPU us per request, latency deltas at a fixed rate, upstream reuse and
# memory. Settings: REPS (3), DURATION seconds (10), CONNS (16), RATE (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nginx oha taskset python3; do
  command -v "$tool" >/dev/null || { echo "load.sh: $tool is missing" >&2; exit 2; }
done
# The system under test is built as it ships (profile dist); the harness needs no LTO.
cargo build --profile dist --locked -p waypoint --bin waypoint
cargo build --release --locked -p waypoint-tests --bins
target="${CARGO_TARGET_DIR:-target}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 benches/load.py "$target/release" "$target/dist/waypoint"
