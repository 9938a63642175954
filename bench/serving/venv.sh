#!/bin/sh
# Creates (or completes) the venv with the seed's stack (Ray Serve, FastAPI, uvicorn, torch,
# transformers). Idempotent: a requirement that is already satisfied (extras included, e.g.
# ray[serve]) is not reinstalled, so only the first run downloads anything.
# One pip install per line of bench/serving/requirements.txt; results go to
# OUT/install_status.json and OUT/install-NAME.log.
#   usage: sh bench/serving/venv.sh VENV_DIR OUT_DIR
set -u
VENV=$1
OUT=$2
REQ=bench/serving/requirements.txt
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ]; then
    echo "bench-serving: creating venv $VENV"
    if ! python3 -m venv "$VENV" 2>"$OUT/venv.err"; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        else
            echo "bench-serving: python3 -m venv failed; install python3-venv (make deps)" >&2
        fi
        rm -rf "$VENV"
        python3 -m venv "$VENV" || exit 1
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"

# The requirement lines that the venv does not satisfy yet (for ray[serve]: ray itself and
# every package its "serve" extra pulls in).
missing=$("$PY" - "$REQ" <<'PYEOF'
import sys, importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

def satisfied(r, extras=()):
    try:
        v = md.version(r.name)
    except md.PackageNotFoundError:
        return False
    if r.specifier and not r.specifier.contains(v, prereleases=True):
        return False
    for extra in extras:
        for dep in md.requires(r.name) or []:
            d = Requirement(dep)
            if d.marker is None or not d.marker.evaluate({"extra": extra}):
                continue
            if not satisfied(Requirement(str(d).split(";")[0])):
                return False
    return True

for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        r = Requirement(line)
        if not satisfied(r, sorted(r.extras)):
            print(line)
PYEOF
)
status="$OUT/install_status.json"
[ -f "$status" ] || echo '{}' >"$status"
if [ -z "$missing" ]; then
    echo "bench-serving: venv $VENV has the seed's stack"
    exit 0
fi
echo "$missing" | while read -r req; do
    name=$(echo "$req" | sed 's/[][<>=!~ ].*//')
    log="$OUT/install-$name.log"
    echo "bench-serving: pip install $req (log: $log)"
    t0=$(date +%s)
    if "$PY" -m pip install "$req" >"$log" 2>&1; then rc=0; else rc=$?; fi
    t1=$(date +%s)
    [ $rc -eq 0 ] || echo "bench-serving: installing $req FAILED (exit $rc), see $log" >&2
    "$PY" - "$status" "$name" "$rc" "$((t1 - t0))" "$log" "$req" <<'PYEOF'
import json, sys
path, name, rc, secs, log, req = sys.argv[1:]
d = json.load(open(path))
tail = open(log, errors="replace").read().strip().splitlines()[-15:]
d[name] = {"ok": rc == "0", "seconds": int(secs), "req": req,
           "log_tail": [] if rc == "0" else tail}
json.dump(d, open(path, "w"), indent=1)
PYEOF
done
exit 0
