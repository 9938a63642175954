#!/bin/sh
# Runs each unit-test binary given on the command line from the repository root and
# prints one summary line. Exit status is non-zero if any binary failed.
pass=0; fail=0; failed=""
for t in "$@"; do
    echo "== $t"
    if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed="$failed $t"; fi
done
echo
[ -n "$failed" ] && echo "failed:$failed"
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
