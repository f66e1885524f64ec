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
#     HOW    apt:PACKAGES (Debian packages, one apt-get run for all) or rustup:COMPONENT
#     WHY    who needs it, for the messages
# A tool with another way in (helm from its release archive, Python packages with pip) needs a
# new HOW: a case in `install_one` and, if it needs root, the same care as `install_apt`.
set -euo pipefail

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

# group  name          check                     how            why
need build cc           "cc --version"            apt:gcc        "rustc links with it; ring and zlib-ng compile C"
need build cmake        "cmake --version"         apt:cmake      "pingora-core builds zlib-ng (libz-ng-sys) with it"
need test  rustfmt      "cargo fmt --version"     rustup:rustfmt "cargo fmt --check"
need test  clippy       "cargo clippy --version"  rustup:clippy  "cargo clippy -D warnings"
need test  cargo-fuzz   "cargo fuzz --version"    cargo:cargo-fuzz "fuzz/smoke.sh, the config loader's fuzz run"
# Checks added later (helm for the chart checks, Python packages for schema validation) go here.

install_missing
