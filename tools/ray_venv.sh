#!/bin/sh
# Creates, once per machine, the venv whose real Ray Serve `serve` CLI the control-plane tests
# (tests/serve/test_control.py) run against cserve's admin API. Only the CLI and Ray's schema
# classes are used: no Ray cluster is ever started (`serve deploy/status/config/shutdown -a URL`
# only talk REST to the admin API).
#
#   usage: sh tools/ray_venv.sh     (progress on stderr; the venv's path on the last line of stdout)
#   CSERVE_RAY_VENV   where the venv lives (default ~/.cache/cserve/venv-ray: outside the work
#                     tree, so every clone on the machine shares one)
#   CSERVE_RAY_REQ    what to install (default ray[serve]==2.50.1, the release CONTRACT.md was
#                     checked against)
#
# Idempotent: when the venv's `serve --help` runs it does nothing. A half-built venv (killed
# install) is rebuilt; concurrent runs wait for each other (flock). Exit status 0 only when the
# CLI works.
set -u
VENV=${CSERVE_RAY_VENV:-$HOME/.cache/cserve/venv-ray}
REQ=${CSERVE_RAY_REQ:-"ray[serve]==2.50.1"}
DONE="$VENV/.cserve-ray-ok"

works() {
    [ -f "$DONE" ] && [ -x "$VENV/bin/serve" ] && "$VENV/bin/serve" --help >/dev/null 2>&1
}

if works; then
    echo "ray-venv: $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("ray", m.version("ray"))' 2>/dev/null))"
    echo "$VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")" || exit 1
lock="$VENV.lock"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$lock"
    flock 9
    if works; then  # another run finished it while this one waited
        echo "$VENV"
        exit 0
    fi
fi

rm -rf "$VENV"
echo "ray-venv: creating $VENV with $REQ" >&2
t0=$(date +%s)
if ! python3 -m venv "$VENV"; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    rm -rf "$VENV"
    python3 -m venv "$VENV" || { echo "ray-venv: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
fi
log="$VENV/install.log"
if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
       "$VENV/bin/python" -m pip install -q "$REQ"; } >"$log" 2>&1; then
    echo "ray-venv: pip install $REQ FAILED; last lines of $log:" >&2
    tail -20 "$log" >&2
    exit 1
fi
if ! "$VENV/bin/serve" --help >/dev/null 2>"$log.serve"; then
    echo "ray-venv: installed, but '$VENV/bin/serve --help' fails:" >&2
    tail -20 "$log.serve" >&2
    exit 1
fi
touch "$DONE"
t1=$(date +%s)
echo "ray-venv: ready in $((t1 - t0)) s, $(du -sh "$VENV" | cut -f1) ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("ray", m.version("ray"))'))" >&2
echo "$VENV"
