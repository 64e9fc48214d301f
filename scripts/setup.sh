#!/usr/bin/env bash
# Installs what ckrun's build, demo and tests need on a fresh Debian machine
# (only what is missing), so that the README's two commands work anywhere.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || missing+=("$2"); }
need cc gcc
need python3 python3
need javac default-jdk-headless
# Slurm and munge for tests/slurm.rs, which starts its own one-node cluster
# (own slurm.conf, munge key and sockets in a temporary directory): a munged
# the package starts on its default socket is not used, and Debian's slurmd
# and slurmctld services do not start without /etc/slurm/slurm.conf.
need slurmctld slurmctld
need slurmd slurmd
need sbatch slurm-client
need munged munge
# OpenMP runtime for the OpenMP example.
[ -n "$(gcc -print-file-name=libgomp.so 2>/dev/null | grep /)" ] || missing+=(libgomp1)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  # Quiet unless it fails (debconf and dpkg talk on stderr even with -qq).
  log=$(mktemp)
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
fi

command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >/dev/null 2>&1 || true
