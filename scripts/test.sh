#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the integration tests in
# tests/, which start the real `sandpit` binary (as root; the rootless test creates the
# system user `sandpit-rootless`). Every test binary runs even after a failure
# (--no-fail-fast). Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh --test isolation
# Then, on a full run (no arguments, SANDPIT_SKIP_PYTHON unset), the Python SDK's tests
# (mypy --strict, then clients/python/tests) in a venv against the release binary. Fails if
# any part fails.
# Then, on a full run (SANDPIT_SKIP_NODE unset), the Cloudflare Sandbox SDK tests: `npm ci`
# in tests/cloudflare and `node --import ./register.mjs --test` against the release binary.
# The E2B SDK tests (tests/e2b) run in their own venv after the Python SDK's.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
cargo test --release --workspace --no-fail-fast "$@" -- --test-threads 4 || status=$?

if [[ $# -eq 0 && -z "${SANDPIT_SKIP_PYTHON:-}" ]]; then
  target="${CARGO_TARGET_DIR:-$PWD/target}"
  venv="$target/python-venv"
  echo "=== Python SDK tests (venv: $venv) ==="
  if python3 -m venv "$venv" &&
    "$venv/bin/pip" install -q --disable-pip-version-check ./clients/python pytest pytest-asyncio mypy; then
    "$venv/bin/python" -m mypy --config-file clients/python/pyproject.toml \
      clients/python/src/sandpit clients/python/tests examples/agent_loop.py || status=1
    SANDPIT_BIN="$target/release/sandpit" "$venv/bin/python" -m pytest clients/python/tests -q -rs ||
      status=1
  else
    echo "=== could not set up the Python venv ===" >&2
    status=1
  fi
  # The unmodified E2B SDKs (pinned) against the e2b dialect (tests/e2b).
  e2b_venv="$target/e2b-venv"
  echo "=== E2B SDK tests (venv: $e2b_venv) ==="
  if python3 -m venv "$e2b_venv" &&
    "$e2b_venv/bin/pip" install -q --disable-pip-version-check \
      e2b==2.63.0 e2b-code-interpreter==2.11.5 pytest pytest-asyncio; then
    SANDPIT_BIN="$target/release/sandpit" "$e2b_venv/bin/python" -m pytest tests/e2b -q -rs ||
      status=1
  else
    echo "=== could not set up the E2B venv ===" >&2
    status=1
  fi
fi

if [[ $# -eq 0 && -z "${SANDPIT_SKIP_NODE:-}" ]]; then
  target="${CARGO_TARGET_DIR:-$PWD/target}"
  echo "=== Cloudflare Sandbox SDK tests (tests/cloudflare) ==="
  if (cd tests/cloudflare && npm ci --no-audit --no-fund --loglevel=error); then
    (cd tests/cloudflare && SANDPIT_BIN="$target/release/sandpit" node --import ./register.mjs --test) ||
      status=1
  else
    echo "=== could not install tests/cloudflare (npm ci) ===" >&2
    status=1
  fi
fi

# On a full run (SANDPIT_SKIP_FUZZ unset): schemathesis against the release binary's
# /openapi.json (scripts/fuzz.sh: no 5xx, status codes, content types and bodies as documented).
if [[ $# -eq 0 && -z "${SANDPIT_SKIP_FUZZ:-}" ]]; then
  echo "=== schemathesis fuzz (scripts/fuzz.sh) ==="
  SANDPIT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/sandpit" scripts/fuzz.sh || status=1
fi
exit "$status"
