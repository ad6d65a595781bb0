#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the integration tests in
# tests/, which start the real `sandpit` binary (as root; the rootless test creates the
# system user `sandpit-rootless`). Every test binary runs even after a failure
# (--no-fail-fast). Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh --test isolation
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --workspace --no-fail-fast "$@" -- --test-threads 4
