#!/bin/sh
# Runs libFuzzer targets (built by `make fuzz` into $FUZZ_DIR) for SECONDS each,
# one after the other, on a working copy of each seed corpus:
#   sh tests/fuzz/run.sh SECONDS TARGET...     (TARGET: safetensors, tokenizer, ...)
# The committed seeds (tests/fuzz/corpus/TARGET/) are copied into
# $FUZZ_DIR/corpus-TARGET, which keeps what earlier runs found; a crashing
# input is written to $FUZZ_DIR/artifacts-TARGET/ and the log to
# $FUZZ_DIR/fuzz_TARGET.log. Extra libFuzzer flags: FUZZ_ARGS="-jobs=2 ...".
# Inputs of earlier findings, tests/fuzz/crashes/TARGET-*, are replayed first.
# Exit status: non-zero when any target crashed, leaked, timed out or failed.
set -u
[ $# -ge 2 ] || { echo "usage: $0 SECONDS TARGET..." >&2; exit 2; }
secs=$1
shift
dir=${FUZZ_DIR:-build/fuzz}
root=$(pwd)
failed=""
for t in "$@"; do
    bin=$dir/fuzz_$t
    corpus=$dir/corpus-$t
    art=$dir/artifacts-$t
    log=$dir/fuzz_$t.log
    if [ ! -x "$bin" ]; then
        echo "fuzz_$t: $bin not built (run make fuzz)" >&2
        failed="$failed $t"
        continue
    fi
    mkdir -p "$corpus" "$art"
    [ -d "tests/fuzz/corpus/$t" ] && cp tests/fuzz/corpus/"$t"/* "$corpus"/
    echo "== fuzz_$t: ${secs}s on $corpus ($(ls "$corpus" | wc -l) inputs), log $log"
    bad=0
    known=$(ls tests/fuzz/crashes/"$t"-* 2>/dev/null)
    if [ -n "$known" ]; then
        # shellcheck disable=SC2086 # one argument per file (names have no spaces)
        if ! CS_FUZZ_ROOT=$root "$bin" $known >"$log.replay" 2>&1; then
            echo "   an input of tests/fuzz/crashes/ still fails (log $log.replay):"
            grep -E 'Running: |fuzz invariant violated|ERROR:|SUMMARY:' "$log.replay" | tail -n 3 | sed 's/^/   /'
            bad=1
        fi
    fi
    dict=""
    [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
    # shellcheck disable=SC2086 # FUZZ_ARGS and dict are lists of flags
    CS_FUZZ_ROOT=$root "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$art/" $dict ${FUZZ_ARGS:-} "$corpus" >"$log" 2>&1
    rc=$?
    # last status line (#N ... cov: C ft: F corp: ... exec/s: E) and the final stats
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "   ${execs:-?} executions, ${rate:-?}/s; $last"
    if [ "$rc" -ne 0 ]; then
        echo "   FAILED (exit $rc); the report:"
        grep -E 'ERROR:|SUMMARY:|fuzz invariant violated|runtime error|Test unit written|^    #[0-9]+ ' "$log" |
            grep -v ' in fuzzer::\| in __\|libc\.so\|/sysdeps/\|nptl/\|stdlib/' | head -n 30 | sed 's/^/   /'
        bad=1
    fi
    [ "$bad" -eq 0 ] || failed="$failed $t"
done
if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed (reproduce: $dir/fuzz_TARGET $dir/artifacts-TARGET/crash-...)"
    exit 1
fi
echo "fuzz: $# targets, no crash in ${secs}s each"
