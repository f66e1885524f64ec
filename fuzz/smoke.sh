#!/usr/bin/env bash
# Runs the config-loader fuzz target briefly, as CI does: a fixed time and input-size bound, the
# build outside the checkout. Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); a stable
# toolchain works through RUSTC_BOOTSTRAP (cargo-fuzz passes -Zsanitizer=address).
#
#   fuzz/smoke.sh [SECONDS]        (default 60)
#
# Environment: FUZZ_TARGET_DIR (default ~/.cache/waypoint-fuzz-target), FUZZ_MAX_LEN (default
# 65536 bytes; the loader itself refuses more than 1.5 MiB, which fuzzing at that size would
# only slow down).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${1:-60}"
max_len="${FUZZ_MAX_LEN:-65536}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/waypoint-fuzz-target}"
export RUSTC_BOOTSTRAP=1
corpus="$CARGO_TARGET_DIR/corpus/config_loader"
mkdir -p "$corpus" "$CARGO_TARGET_DIR/artifacts"
# Seed with the project's own examples so the fuzzer starts from valid Kubernetes objects.
find "$here/../examples" -name '*.yaml' -exec cp {} "$corpus/" \;
cd "$here/.."
# -timeout: any single input taking over 10 s is a finding (the loader must stay linear);
# -rss_limit_mb: so is one growing past 2 GiB.
exec cargo fuzz run --fuzz-dir fuzz/loader config_loader "$corpus" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$CARGO_TARGET_DIR/artifacts/"
