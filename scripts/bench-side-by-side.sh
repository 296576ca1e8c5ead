#!/usr/bin/env bash
# Side by side on one machine: an earlier build (a commit, in a worktree of its own) against this
# checkout with tracing off, every request traced, and 5 % traced; interleaved rounds so the machine's
# drift hits every configuration alike. BENCHMARKS.md ("Side by side") quotes a run of this script.
#
#   scripts/bench-side-by-side.sh [BASE_COMMIT] [ROUNDS]      (defaults: 415cd38, 3)
#
# Needs `make model` done here. Each run: sentiment bench --skip-classic --no-saturation --workloads
# repeat new --hold 20s --ramp-up 5s (about 80 s); the lines "req/s" of each log are the results.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD
BASE=${1:-415cd38}
ROUNDS=${2:-3}
OUT=$HERE/loadtest/results/side-by-side-$(date -u +%Y%m%d-%H%M%S)
BASE_TREE=$OUT/base-checkout
PY=$HERE/.venv/bin/python
RUN=(bench --skip-classic --no-saturation --workloads repeat new --hold 20s --ramp-up 5s)
mkdir -p "$OUT"

git worktree add --detach "$BASE_TREE" "$BASE" >/dev/null
trap 'git worktree remove --force "$BASE_TREE"' EXIT
# The earlier build, imported from its own checkout with this venv (its dependencies are a subset).
base() { (cd "$BASE_TREE" && PYTHONPATH="$BASE_TREE" "$PY" -c 'import sys; from sentiment.cli import main; sys.exit(main())' "$@"); }
base model build >"$OUT/base-model.log" 2>&1

traced() {  # traced NAME SAMPLER [ARG]: this build with its spans sent to a local OTLP receiver
  local name=$1 sampler=$2 arg=${3:-1.0}
  "$PY" -m sentiment.stack.traces --port 4399 --file "$OUT/$name-spans.jsonl" >"$OUT/$name-receiver.log" 2>&1 &
  local receiver=$!
  sleep 2
  OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4399 OTEL_TRACES_SAMPLER=$sampler \
    OTEL_TRACES_SAMPLER_ARG=$arg "$HERE/.venv/bin/sentiment" "${RUN[@]}" --report "$OUT/$name.md" >"$OUT/$name.log" 2>&1 || true
  kill "$receiver"; wait "$receiver" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  echo "round $round: before ($BASE)"
  base "${RUN[@]}" >"$OUT/before-$round.log" 2>&1 || true
  echo "round $round: this build, tracing off"
  "$HERE/.venv/bin/sentiment" "${RUN[@]}" --report "$OUT/off-$round.md" >"$OUT/off-$round.log" 2>&1 || true
  echo "round $round: this build, every request traced"
  traced "all-$round" always_on
  echo "round $round: this build, 5 % traced"
  traced "five-$round" parentbased_traceidratio 0.05
done
for log in "$OUT"/*.log; do
  case $log in *receiver.log|*model.log) continue ;; esac
  echo "$(basename "$log" .log): $(grep -h 'req/s' "$log" | sed 's/^ *//' | tr '\n' ' ')"
done | sort | tee "$OUT/summary.txt"
