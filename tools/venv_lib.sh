# shellcheck shell=sh
# What the once-per-machine test venvs (tools/ray_venv.sh, tools/deploy_venv.sh) share: the
# lock, the rebuild from scratch, the pip install with its log, the closing line. POSIX sh;
# sourced, not run:  . "$(dirname "$0")/venv_lib.sh"
#
# venv_create TAG VENV WORKS REQUIREMENT...
#   TAG           prefix of the progress lines on stderr ("ray-venv")
#   VENV          the venv's directory (its parent is created)
#   WORKS         a command (usually a shell function of the caller) that succeeds when the
#                 venv is complete
#   REQUIREMENT   what pip installs, one argument each
# Waits for any other run building the same VENV (flock on VENV.lock, held until the caller
# exits). When WORKS succeeds after the wait, that run finished it: prints VENV and exits 0.
# Else removes VENV (a half-built one from a killed install included), creates it with
# python3 -m venv and installs the requirements, logging to $VENV_LOG ($VENV/install.log).
# Exits 1, with the log's last lines on stderr, when that fails; returns 0 otherwise, with
# $VENV_T0 the start time (seconds) for venv_ready.
venv_create() {
    _tag=$1 _venv=$2 _works=$3
    shift 3
    mkdir -p "$(dirname "$_venv")" || exit 1
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$_venv.lock"
        flock 9
        if "$_works"; then # another run finished it while this one waited
            echo "$_venv"
            exit 0
        fi
    fi
    rm -rf "$_venv"
    echo "$_tag: creating $_venv with $*" >&2
    VENV_T0=$(date +%s)
    if ! python3 -m venv "$_venv"; then
        # a bare Debian python3 lacks ensurepip; as root it can be added here
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        fi
        rm -rf "$_venv"
        python3 -m venv "$_venv" || { echo "$_tag: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
    fi
    VENV_LOG="$_venv/install.log"
    if ! { "$_venv/bin/python" -m pip install -q --upgrade pip &&
           "$_venv/bin/python" -m pip install -q "$@"; } >"$VENV_LOG" 2>&1; then
        echo "$_tag: pip install $* FAILED; last lines of $VENV_LOG:" >&2
        tail -20 "$VENV_LOG" >&2
        exit 1
    fi
}

# venv_ready TAG VENV [NOTE]: the closing lines of a build: time and size on stderr (NOTE
# after them in parentheses), then VENV alone on stdout, the line callers read.
venv_ready() {
    _t1=$(date +%s)
    echo "$1: ready in $((_t1 - VENV_T0)) s, $(du -sh "$2" | cut -f1)${3:+ ($3)}" >&2
    echo "$2"
}
