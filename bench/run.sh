#!/bin/sh
# make bench: cserve against its peers, same machine, same run, same weights.
# Sets up the peers' venv (build/bench-venv, or $BENCH_VENV), measures the roofline, runs every
# engine in its own process (bench/harness.py), then writes bench/RESULTS.md and
# bench/results.png (bench/report.py). Raw JSON and logs: build/bench/.
# Options are environment variables: see bench/README.md (BENCH_THREADS, BENCH_QUICK, ...).
set -eu
cd "$(dirname "$0")/.."
t0=$(date +%s)
OUT=${BENCH_OUT:-build/bench}
export BENCH_OUT="$OUT"
VENV=${BENCH_VENV:-build/bench-venv}
mkdir -p "$OUT"

if [ ! -f "${BENCH_MODEL:-build/models/distil}/model.safetensors" ]; then
    echo "bench: ${BENCH_MODEL:-build/models/distil} missing: run 'make bench' (or make models)" >&2
    exit 1
fi
[ -x build/cserve ] || echo "bench: build/cserve missing (run 'make bench'); its rows will be n/a" >&2

if [ "${BENCH_SKIP_INSTALL:-0}" = 1 ] && [ -x "$VENV/bin/python" ]; then
    echo "bench: BENCH_SKIP_INSTALL=1, using $VENV as it is"
else
    sh bench/venv.sh "$VENV" "$OUT"
fi
t1=$(date +%s)

# The roofline probe: plain C, vector width and instructions (FMA, bf16 and int8 dot products)
# picked at run time.
if [ ! -x "$OUT/roofline" ] || [ bench/roofline.c -nt "$OUT/roofline" ]; then
    ${CC:-cc} -O2 -o "$OUT/roofline" bench/roofline.c -lpthread
fi

"$VENV/bin/python" bench/harness.py
"$VENV/bin/python" bench/contention.py --save-section "$OUT/contention-section.md" # report.py rewrites the file
"$VENV/bin/python" bench/report.py "$OUT/results.json" bench/RESULTS.md bench/results.png
# The noisy-neighbour table (bench/contention.py); BENCH_CONTENTION=0 keeps the previous one.
if [ "${BENCH_CONTENTION:-1}" = 0 ]; then
    "$VENV/bin/python" bench/contention.py --insert "$OUT/contention-section.md"
else
    "$VENV/bin/python" bench/contention.py
fi
# KV cache memory per 1,000 tokens and 512-token sequences in 4 GiB (bench/kvmem.py).
BENCH_CSERVE=build/cserve python3 bench/kvmem.py
# Decode attention over the paged cache, kernel vs per-key form (bench/attention.py).
BENCH_CSERVE=build/cserve python3 bench/attention.py
t2=$(date +%s)

# The tables, on the terminal too.
sed -n '/^## Results/,/^## Engines/p' bench/RESULTS.md | sed '$d'
echo "bench: done in $((t2 - t0)) s (venv set-up $((t1 - t0)) s, measurements $((t2 - t1)) s);" \
     "see bench/RESULTS.md and bench/results.png"
