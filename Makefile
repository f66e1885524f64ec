# The two commands of the README:
#   make demo   install what the build lacks, build (release) and run the demo mesh
#   make test   install what the checks lack, then run exactly what CI (.ci/run) runs
# and `make deps`, which both call, to install only.
#
# Builds go to $CARGO_TARGET_DIR, by default ~/.cache/waypoint-target (never into the checkout),
# so every worktree and clone of this repository on the machine shares one incremental build.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(HOME)/.cache/waypoint-target
# Everything here runs in order: the checks share one target dir, and a failure stops the run.
.NOTPARALLEL:

.PHONY: deps demo test fmt clippy unit demo-check fuzz-smoke chart chart-golden

# Which tool groups `.ci/deps.sh` installs: `make deps` wants all; `demo` needs only the build's
# (a target-specific value applies to the prerequisites it pulls in).
DEPS_GROUPS := build test
deps:
	@.ci/deps.sh $(DEPS_GROUPS)

demo: DEPS_GROUPS := build
demo: deps
	$(CARGO) run --release --locked -p waypoint-tests --bin demo-mesh

# Every check CI runs, in this order. A new check gets a target below and its name in CHECKS; the
# tools it needs go into .ci/deps.sh (group test).
CHECKS := fmt clippy unit demo-check fuzz-smoke chart
test: deps $(CHECKS)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

# The README's main job, checked: the demo mesh's self-check, which exits non-zero when an answer
# is not the expected one. It runs the debug binary of the `cargo test` build (cargo builds a
# package's binaries for its integration tests; after `unit` this builds nothing): `cargo run -p`
# would resolve features without the dev-dependencies and rebuild half the tree a second time.
demo-check:
	$(CARGO) test --workspace --locked --no-run --quiet
	"$(CARGO_TARGET_DIR)/debug/demo-mesh" --check

# The config loader under libFuzzer for a bounded time (and input size): no input may crash it, loop,
# or grow it past 2 GiB. Its build (gateway-api-bindings with AddressSanitizer) goes to
# ~/.cache/waypoint-fuzz-target; the first one is slow, later ones build only what changed.
FUZZ_SECONDS ?= 30
fuzz-smoke:
	fuzz/smoke.sh $(FUZZ_SECONDS)

# The Helm chart (charts/waypoint): versions equal to the crate's, `helm lint --strict`, `helm
# template` of each charts/waypoint/ci/*-values.yaml against its golden file in ci/golden/, the
# rendered core objects against Kubernetes' schemas, and values.schema.json refusing
# ci/invalid/*.yaml with their messages (charts/check.sh says how). The Gateway and GatewayClass
# documents are checked against the Gateway API CRD schema, and every pod against the `restricted`
# Pod Security Standard, by `unit` (tests/tests/chart.rs).
# helm and kubernetes-validate are in $(WAYPOINT_TOOLS)/bin, put there by .ci/deps.sh.
export WAYPOINT_TOOLS ?= $(HOME)/.cache/waypoint-tools
chart:
	charts/check.sh

# After an intended change to the chart: render the golden files again (review the diff).
chart-golden:
	charts/check.sh --update
