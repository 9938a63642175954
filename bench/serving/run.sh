#!/bin/sh
# make bench-serving: the seed's serving stack (Ray Serve + FastAPI + transformers pipeline) against
# `cserve serve`, same machine, same run, same model, same requests.
# Sets up the seed's venv (build/serving-venv, or $BENCH_SERVING_VENV) when a seed system is
# selected, runs every system in turn (bench/serving/harness.py), then writes
# bench/serving/RESULTS.md and bench/serving/results.png (bench/serving/report.py). Raw JSON and
# logs: build/bench-serving/.
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

# The seed's venv is needed only when a seed system is selected; the cserve systems run with any
# python3 (the venv's when it is there: transformers counts the tokens, matplotlib draws the plot).
systems=$(python3 bench/serving/harness.py --list-systems)
case ",$systems," in
    *,seed,* | *,seed-batch,* | *,seed-legacy,* | *,seed-batch-legacy,*) need_venv=1 ;;
    *) need_venv=0 ;;
esac
if [ "$need_venv" = 0 ]; then
    if [ -x "$VENV/bin/python" ]; then PY=$VENV/bin/python; else PY=python3; fi
    echo "bench-serving: no seed system in $systems: the seed's venv is not needed (python: $PY)"
elif [ "${BENCH_SERVING_SKIP_INSTALL:-0}" = 1 ] && [ -x "$VENV/bin/python" ]; then
    echo "bench-serving: BENCH_SERVING_SKIP_INSTALL=1, using $VENV as it is"
    PY=$VENV/bin/python
else
    sh bench/serving/venv.sh "$VENV" "$OUT"
    PY=$VENV/bin/python
fi
t1=$(date +%s)

"$PY" bench/serving/harness.py
"$PY" bench/serving/report.py "$OUT/results.json" bench/serving/RESULTS.md bench/serving/results.png
t2=$(date +%s)

sed -n '/^## Throughput/,/^## Systems/p' bench/serving/RESULTS.md | sed '$d'
echo "bench-serving: done in $((t2 - t0)) s (venv set-up $((t1 - t0)) s, measurements $((t2 - t1)) s);" \
     "see bench/serving/RESULTS.md and bench/serving/results.png"
