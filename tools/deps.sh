#!/bin/sh
# Installs what building and testing cserve needs (Debian/Ubuntu packages).
# Safe to run repeatedly; does nothing when everything is already present.
set -e
PKGS="build-essential pkg-config libjansson-dev libpcre2-dev libcmocka-dev python3 python3-venv"
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
