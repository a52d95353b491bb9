#!/usr/bin/env bash
# README's test command, N times in a row, each under `stress-ng --cpu 2` (both cores of the
# CI machine kept busy by other work): what a timing margin in a test must survive.
# usage: scripts/stress_suite.sh [RUNS=3] [LOG_DIR=artifacts/stress]
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
logs="${2:-artifacts/stress}"
mkdir -p "$logs"
command -v stress-ng >/dev/null || { echo "stress-ng is not installed (apt-get install stress-ng)" >&2; exit 2; }
status=0
for i in $(seq 1 "$runs"); do
    stress-ng --cpu 2 --timeout 7200s >/dev/null 2>&1 &
    load=$!
    start=$(date +%s)
    .venv/bin/python -m pytest -q -p no:cacheprovider >"$logs/run-$i.log" 2>&1
    code=$?
    kill "$load" 2>/dev/null; wait "$load" 2>/dev/null
    echo "run $i: exit $code in $(( $(date +%s) - start )) s, commit $(git rev-parse --short HEAD)" | tee -a "$logs/summary.txt"
    grep '^FAILED' "$logs/run-$i.log" | tee -a "$logs/summary.txt"
    [ "$code" = 0 ] || status=1
done
exit $status
