#!/usr/bin/env bash
# Installs what building sandpit needs on a fresh Debian machine, then runs the server.
# Extra arguments go to `sandpit serve` (e.g. --listen 0.0.0.0:8787).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cc >/dev/null || ! command -v pkg-config >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update && apt-get install -y build-essential pkg-config
  else
    echo "need a C compiler and pkg-config: sudo apt-get install -y build-essential pkg-config" >&2
    exit 1
  fi
fi
exec cargo run --release -- serve "$@"
