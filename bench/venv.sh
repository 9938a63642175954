#!/bin/sh
# Creates (or completes) the Python venv with the benchmark peers. Idempotent: a requirement
# that is already satisfied is not reinstalled. Each requirement is installed on its own so
# that one peer failing to install (e.g. llama-cpp-python failing to compile) does not stop
# the others; failures are recorded in build/bench/install_status.json for the report.
#   usage: sh bench/venv.sh VENV_DIR OUT_DIR
set -u
VENV=$1
OUT=$2
REQ=bench/requirements.txt
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ]; then
    echo "bench: creating venv $VENV"
    if ! python3 -m venv "$VENV" 2>"$OUT/venv.err"; then
        # Debian/Ubuntu ship venv support separately (make deps installs it too).
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        else
            echo "bench: python3 -m venv failed; install python3-venv (make deps)" >&2
        fi
        rm -rf "$VENV"
        python3 -m venv "$VENV" || exit 1
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"

# Prints the requirement lines that the venv does not satisfy yet.
missing=$("$PY" - "$REQ" <<'PYEOF'
import sys, importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    r = Requirement(line)
    try:
        v = md.version(r.name)
    except md.PackageNotFoundError:
        print(line); continue
    if r.specifier and not r.specifier.contains(v, prereleases=True):
        print(line)
PYEOF
)

# llama-cpp-python compiles llama.cpp: only the library (no tools, tests, examples or the
# multimodal library), for this CPU (GGML_NATIVE, llama.cpp's default), with all cores.
NCPU=$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$NCPU}"
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}"
export PATH="$(cd "$VENV/bin" && pwd):$PATH"

status="$OUT/install_status.json"
[ -f "$status" ] || echo '{}' >"$status"
if [ -z "$missing" ]; then
    echo "bench: venv $VENV has every peer"
    exit 0
fi
echo "$missing" | while read -r req; do
    name=$(echo "$req" | sed 's/[<>=!~ ].*//')
    if [ "$name" = cmake ] && cmake --version 2>/dev/null | "$PY" -c '
import sys, re
m = re.search(r"(\d+)\.(\d+)", sys.stdin.read() or "")
sys.exit(0 if m and (int(m.group(1)), int(m.group(2))) >= (3, 21) else 1)'; then
        continue   # a recent enough cmake is already on PATH
    fi
    log="$OUT/install-$name.log"
    # A package that failed before in this venv is not retried (llama-cpp-python takes minutes
    # to compile) unless BENCH_RETRY_INSTALL=1.
    if [ "${BENCH_RETRY_INSTALL:-0}" != 1 ] && "$PY" - "$status" "$name" "$req" "$VENV" <<'PYEOF'
import json, sys
path, name, req, venv = sys.argv[1:]
e = json.load(open(path)).get(name) or {}
sys.exit(0 if (not e.get("ok", True) and e.get("req") == req and e.get("venv") == venv) else 1)
PYEOF
    then
        echo "bench: $req failed to install earlier (see $log); not retrying (BENCH_RETRY_INSTALL=1 to retry)" >&2
        continue
    fi
    echo "bench: pip install $req (log: $log)"
    t0=$(date +%s)
    if "$PY" -m pip install "$req" >"$log" 2>&1; then rc=0; else rc=$?; fi
    t1=$(date +%s)
    [ $rc -eq 0 ] || echo "bench: installing $req FAILED (exit $rc), see $log; its runner will be skipped" >&2
    "$PY" - "$status" "$name" "$rc" "$((t1 - t0))" "$log" "$req" "$VENV" <<'PYEOF'
import json, sys
path, name, rc, secs, log, req, venv = sys.argv[1:]
d = json.load(open(path))
tail = open(log, errors="replace").read().strip().splitlines()[-15:]
d[name] = {"ok": rc == "0", "seconds": int(secs), "log_tail": [] if rc == "0" else tail,
           "req": req, "venv": venv}
json.dump(d, open(path, "w"), indent=1)
PYEOF
done
exit 0
