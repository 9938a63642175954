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
# shellcheck source=venv_lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/venv_lib.sh"
VENV=${CSERVE_RAY_VENV:-$HOME/.cache/cserve/venv-ray}
REQ=${CSERVE_RAY_REQ:-"ray[serve]==2.50.1"}
DONE="$VENV/.cserve-ray-ok"

works() {
    [ -f "$DONE" ] && [ -x "$VENV/bin/serve" ] && "$VENV/bin/serve" --help >/dev/null 2>&1
}
ray_version() { "$VENV/bin/python" -c 'import importlib.metadata as m; print("ray", m.version("ray"))' 2>/dev/null; }

if works; then
    echo "ray-venv: $VENV ($(ray_version))"
    echo "$VENV"
    exit 0
fi

venv_create ray-venv "$VENV" works "$REQ"
log=$VENV_LOG
if ! "$VENV/bin/serve" --help >/dev/null 2>"$log.serve"; then
    echo "ray-venv: installed, but '$VENV/bin/serve --help' fails:" >&2
    tail -20 "$log.serve" >&2
    exit 1
fi
touch "$DONE"
venv_ready ray-venv "$VENV" "$(ray_version)"
