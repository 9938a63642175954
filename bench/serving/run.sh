#!/bin/sh
# make bench-serving: the seed's serving stack (Ray Serve + FastAPI + transformers pipeline) against
# `cserve serve`, same machine, same run, same model, same requests.
# Sets up the seed's venv (build/serving-venv, or $BENCH_SERVING_VENV), runs every system in turn
# (bench/serving/harness.py), then writes bench/serving/RESULTS.md and bench/serving/results.png
# (bench/serving/report.py). Raw JSON and logs: build/bench-serving/.
# Options are environment variables: see bench/serving/README.md.
set -eu
cd "$(dirname "$0")/../.."
t0=$(date +%s)
OUT=build/bench-serving
VENV=${BENCH_SERVING_VENV:-build/serving-venv}
mkdir -p "$OUT"

if [ ! -f "${BENCH_MODEL:-build/models/distil}/model.safetensors" ]; then
    echo "bench-serving: ${BENCH_MODEL:-build/models/distil} missing: run 'make bench-serving' (or make models)" >&2
    exit 1
fi
[ -x build/cserve ] || echo "bench-serving: build/cserve missing (run 'make bench-serving'); its rows will be n/a" >&2

if [ "${BENCH_SERVING_SKIP_INSTALL:-0}" = 1 ] && [ -x "$VENV/bin/python" ]; then
    echo "bench-serving: BENCH_SERVING_SKIP_INSTALL=1, using $VENV as it is"
else
    sh bench/serving/venv.sh "$VENV" "$OUT"
fi
t1=$(date +%s)

"$VENV/bin/python" bench/serving/harness.py
"$VENV/bin/python" bench/serving/report.py "$OUT/results.json" bench/serving/RESULTS.md bench/serving/results.png
t2=$(date +%s)

sed -n '/^## Throughput/,/^## Systems/p' bench/serving/RESULTS.md | sed '$d'
echo "bench-serving: done in $((t2 - t0)) s (venv set-up $((t1 - t0)) s, measurements $((t2 - t1)) s);" \
     "see bench/serving/RESULTS.md and bench/serving/results.png"
