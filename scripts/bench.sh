#!/usr/bin/env bash
# Runs `sandpit bench` against every alternative it can install: bubblewrap, gVisor (runsc)
# and Docker (docker.io's dockerd, started here if no engine answers; the image is made with
# `docker import` from a tarball of the host's /usr, /bin, /lib..., since no registry is
# reachable). Then the density run and the latency plot. Run as root on a quiet machine:
#   scripts/bench.sh                     # everything, writes target/bench/*
#   SKIP_INSTALL=1 scripts/bench.sh      # do not apt-get install
#   DENSITY_COUNT=200 scripts/bench.sh   # a smaller density run
# Outputs: target/bench/bench.txt, warm.txt, density.txt, latency.csv and docs/bench-latency.png.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-$PWD/target}/bench"
mkdir -p "$out"

if [[ -z "${SKIP_INSTALL:-}" ]]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends bubblewrap runsc docker.io python3-matplotlib >/dev/null
fi

# A Docker engine: use the one that answers, else start dockerd (as root) for this run.
started_dockerd=""
if command -v docker >/dev/null && ! docker info >/dev/null 2>&1 && command -v dockerd >/dev/null; then
  dockerd >"$out/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
fi
if docker info >/dev/null 2>&1 && ! docker image inspect sandpit-bench >/dev/null 2>&1; then
  # The host's system directories as the image's root filesystem (no registry needed).
  tar -C / -cf - --exclude='usr/share/doc' --exclude='usr/share/man' --exclude='usr/src' \
    usr bin sbin lib lib64 etc 2>/dev/null | docker import - sandpit-bench >/dev/null
fi

cargo build --release
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/sandpit"
"$bin" bench --iterations "${ITERATIONS:-200}" --throughput-seconds 5 \
  --csv "$out/latency.csv" | tee "$out/bench.txt"
"$bin" bench warm --count 100 | tee "$out/warm.txt"
"$bin" bench density --count "${DENSITY_COUNT:-1000}" | tee "$out/density.txt"
/usr/bin/python3 scripts/bench_plot.py "$out/latency.csv" docs/bench-latency.png

if [[ -n "$started_dockerd" ]]; then
  kill "$started_dockerd" || true
fi
