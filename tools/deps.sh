#!/bin/sh
# Installs what building and testing cserve needs (Debian/Ubuntu packages).
# Safe to run repeatedly; does nothing when everything is already present.
#   sh tools/deps.sh         everything: build and test packages, the test venvs (make deps)
#   sh tools/deps.sh build   only what building and serving need (make run): no test tools, no venvs
set -e
PKGS="build-essential pkg-config libjansson-dev libpcre2-dev libcmocka-dev libcurl4-openssl-dev libmicrohttpd-dev libyaml-dev libutf8proc-dev python3 python3-venv chromium chromium-driver podman buildah runc debootstrap skopeo iproute2 iptables curl"
BUILD_PKGS="build-essential pkg-config libjansson-dev libpcre2-dev libcurl4-openssl-dev libmicrohttpd-dev libyaml-dev libutf8proc-dev"
mode=${1:-all}
case "$mode" in
    all) ;;
    build) PKGS=$BUILD_PKGS ;;
    *) echo "usage: sh tools/deps.sh [build]" >&2; exit 2 ;;
esac
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    echo "deps: installing$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
[ "$mode" = build ] && exit 0

# Python test tools live in a venv under build/ (never the system interpreter).
venv=build/venv-test
if [ ! -x "$venv/bin/pytest" ]; then
    echo "deps: creating $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
"$venv/bin/pip" install -q -r tests/requirements.txt

# The real Ray Serve `serve` CLI that tests/serve/test_control.py drives against the admin API
# (a venv outside the work tree, shared by every clone; ~45 s and ~370 MB the first time). A
# failure does not stop deps: those tests then fail (or skip with CSERVE_RAY_VENV_OPTIONAL=1).
sh tools/ray_venv.sh >/dev/null || echo "deps: tools/ray_venv.sh failed; tests/serve/test_control.py needs its venv" >&2

# Offline validators for deploy/k8s and deploy/terraform (kubernetes-validate, checkov, a current
# kubectl and Debian's kubectl 1.20) that tests/deploy/test_manifests.py runs: another venv outside
# the work tree (~90 s and ~500 MB the first time). Without it those tests skip (fail under CI=true).
sh tools/deploy_venv.sh >/dev/null || echo "deps: tools/deploy_venv.sh failed; tests/deploy/test_manifests.py needs its venv" >&2
