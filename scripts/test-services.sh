#!/usr/bin/env bash
# Make sure the programs the test suite needs are installed. Called by `make test`.
#
# Today that is:
#
# - PostgreSQL: the suite runs every database test on SQLite *and* PostgreSQL, and
#   starts its own private, throw-away PostgreSQL server per test session
#   (tests/support/postgres.py).
# - Prometheus (the Debian package `prometheus`): tests/e2e/test_prometheus_e2e.py
#   starts a private Prometheus server that scrapes a test Corral server's /metrics.
# - Chromium (the Debian package `chromium`, /usr/bin/chromium): tests/browser/ drives
#   the web dashboard in a real headless Chromium through Playwright. The Playwright
#   Python package (in the dev extras) never downloads a browser of its own
#   (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1); it launches this one.
# - A Docker engine (the Debian package `docker.io`, /usr/sbin/dockerd, with its
#   containerd and runc) and a static busybox (the Debian package `busybox-static`,
#   /bin/busybox): the `docker_engine` fixture (tests/support/docker_engine.py) starts
#   a private dockerd in a temp dir (its own socket, data root and exec root, no
#   iptables, no bridge) and imports a busybox image into it, built from that
#   binary -- no registry, no download.
# - A Jupyter server with a Python kernel, pip-installed (pinned) into a virtual
#   environment of its own ($CORRAL_TEST_JUPYTER_VENV, default /opt/corral-test/jupyter):
#   tests/e2e/test_jupyter_e2e.py runs it in a job behind its port URL.
#
# So this script only *installs* binaries; it never starts a server or a daemon --
# the machines are shared, and a system PostgreSQL on port 5432, Prometheus on port
# 9090 or dockerd on /var/run/docker.sock is exactly what the tests avoid. (apt would
# start the docker.io package's daemon itself; the policy-rc.d below forbids that.)
#
# When something is missing and cannot be installed (not root, no apt, apt fails),
# it prints a loud warning and carries on (exit 0): the tests that need it will then
# be skipped, and pytest repeats the warning in its summary or skip reasons. It never
# fails the build by itself. Idempotent; takes milliseconds when everything is present.
set -euo pipefail

PG_LIB=/usr/lib/postgresql

log() { printf 'test-services: %s\n' "$*"; }

# warn_loud WHAT WHY FIX-LINE...: a banner that is hard to miss in CI logs.
warn_loud() {
    local what=$1 why=$2 line
    shift 2
    {
        echo
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        echo "!! WARNING: $what is NOT installed, and this script could not install it:"
        echo "!!     $why"
        for line in "$@"; do
            echo "!! $line"
        done
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        echo
    } >&2
}

warn_postgres() {
    warn_loud PostgreSQL "$1" \
        "Every PostgreSQL test will be SKIPPED: the PostgreSQL back-end is UNTESTED." \
        "Fix: run scripts/test-services.sh as root on a machine that can reach the" \
        "     Debian package mirror (it runs: apt-get install postgresql)," \
        "     or install PostgreSQL so that $PG_LIB/<version>/bin/initdb exists."
}

warn_prometheus() {
    warn_loud Prometheus "$1" \
        "The Prometheus scrape test (tests/e2e/test_prometheus_e2e.py) will be SKIPPED:" \
        "/metrics is UNTESTED against a real Prometheus server." \
        "Fix: run scripts/test-services.sh as root on a machine that can reach the" \
        "     Debian package mirror (it runs: apt-get install prometheus)," \
        "     or put a \`prometheus\` binary on PATH."
}

# Why we cannot install with apt here (not root, no apt-get), or nothing if we can.
cannot_apt() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "installing needs root (we are $(id -un))"
    elif ! command -v apt-get >/dev/null; then
        echo "there is no apt-get on this machine"
    fi
}

# apt would otherwise start (and enable) the distribution's services (PostgreSQL on
# port 5432, Prometheus on 9090, dockerd and containerd) as part of the install; a policy-rc.d that answers
# 101 forbids that. An existing policy-rc.d (Docker images ship one) is left alone.
POLICY=/usr/sbin/policy-rc.d
POLICY_OURS=0
remove_policy() { [[ $POLICY_OURS -eq 1 ]] && rm -f "$POLICY"; return 0; }
trap remove_policy EXIT

APT_UPDATED=0
APT_ERROR=""

# apt_install PACKAGE...: apt-get update (once per run), then install, quietly; on
# failure print the log's tail, set APT_ERROR and return 1. (Not to be called in a
# subshell: it sets APT_UPDATED and POLICY_OURS for the rest of the run.)
apt_install() {
    local aptlog
    aptlog=$(mktemp -t corral-apt-XXXXXX.log)
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\n# temporary, from corral scripts/test-services.sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        POLICY_OURS=1
    fi
    log "$* missing; installing with apt-get (log: $aptlog) ..."
    if ! {
        if [[ $APT_UPDATED -eq 0 ]]; then
            apt-get -q -o DPkg::Lock::Timeout=300 update && APT_UPDATED=1
        fi &&
            DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
                install --no-install-recommends "$@"
    } >"$aptlog" 2>&1; then
        tail -n 15 "$aptlog" >&2 || true
        APT_ERROR="apt-get failed (see $aptlog)"
        return 1
    fi
    rm -f "$aptlog"
}

# ---------------------------------------------------------------- PostgreSQL

# The newest $PG_LIB/<version>/bin that has initdb, or nothing.
pg_bindir() {
    local initdb newest=""
    for initdb in "$PG_LIB"/*/bin/initdb; do
        [[ -x $initdb ]] && newest+="${initdb%/initdb}"$'\n'
    done
    [[ -n $newest ]] && printf '%s' "$newest" | sort -V | tail -n 1
    return 0
}

ensure_postgres() {
    local bindir why
    bindir=$(pg_bindir)
    if [[ -z $bindir ]]; then
        why=$(cannot_apt)
        if [[ -n $why ]]; then
            warn_postgres "no $PG_LIB/*/bin/initdb, and $why"
            return 0
        fi
        if ! apt_install postgresql; then
            warn_postgres "$APT_ERROR"
            return 0
        fi
        bindir=$(pg_bindir)
        if [[ -z $bindir ]]; then
            warn_postgres "apt-get installed postgresql, but there is still no $PG_LIB/*/bin/initdb"
            return 0
        fi
    fi

    # initdb refuses to run as root, so as root the tests run the server as `postgres`.
    if [[ $(id -u) -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
        log "creating the 'postgres' system user (the tests run initdb/postgres as it, not as root)"
        if ! useradd --system --user-group --home-dir /var/lib/postgresql \
            --shell /usr/sbin/nologin postgres; then
            warn_postgres "there is no 'postgres' user to run the server as, and useradd failed"
            return 0
        fi
    fi

    log "PostgreSQL $(basename "$(dirname "$bindir")") ready ($bindir); the tests start their own server"
}

# ---------------------------------------------------------------- Prometheus

ensure_prometheus() {
    local why
    if ! command -v prometheus >/dev/null; then
        why=$(cannot_apt)
        if [[ -n $why ]]; then
            warn_prometheus "no \`prometheus\` on PATH, and $why"
            return 0
        fi
        if ! apt_install prometheus; then
            warn_prometheus "$APT_ERROR"
            return 0
        fi
        if ! command -v prometheus >/dev/null; then
            warn_prometheus "apt-get installed prometheus, but there is still no \`prometheus\` on PATH"
            return 0
        fi
    fi
    log "Prometheus $(prometheus --version 2>&1 | awk 'NR == 1 { print $3 }') ready" \
        "($(command -v prometheus)); the tests start their own server"
}

# ---------------------------------------------------------------- Chromium

CHROMIUM=/usr/bin/chromium

warn_chromium() {
    warn_loud Chromium "$1" \
        "The browser tests (tests/browser/) will be SKIPPED: the web dashboard is" \
        "UNTESTED in a real browser (set CORRAL_REQUIRE_CHROMIUM=1 to make that a failure)." \
        "Fix: run scripts/test-services.sh as root on a machine that can reach the" \
        "     Debian package mirror (it runs: apt-get install chromium)," \
        "     or install Chromium so that $CHROMIUM exists."
}

ensure_chromium() {
    local why
    if [[ ! -x $CHROMIUM ]]; then
        why=$(cannot_apt)
        if [[ -n $why ]]; then
            warn_chromium "no $CHROMIUM, and $why"
            return 0
        fi
        if ! apt_install chromium; then
            warn_chromium "$APT_ERROR"
            return 0
        fi
        if [[ ! -x $CHROMIUM ]]; then
            warn_chromium "apt-get installed chromium, but there is still no $CHROMIUM"
            return 0
        fi
    fi
    log "Chromium $("$CHROMIUM" --version 2>/dev/null | awk '{ print $2 }') ready ($CHROMIUM);" \
        "the browser tests start it headless through Playwright"
}

# ---------------------------------------------------------------- Docker

DOCKERD=/usr/sbin/dockerd
BUSYBOX=/bin/busybox

warn_docker() {
    warn_loud "$1" "$2" \
        "The Docker engine tests (every test that uses the docker_engine fixture) will be" \
        "SKIPPED: the Docker job runtime is UNTESTED against a real engine" \
        "(set CORRAL_REQUIRE_DOCKER=1 to make that a failure)." \
        "Fix: run scripts/test-services.sh as root on a machine that can reach the" \
        "     Debian package mirror (it runs: apt-get install $3)," \
        "     or install it so that $4 exists."
}

# ensure_docker_binary WHAT PATH PACKAGE: install PACKAGE with apt when PATH is missing.
# Returns 1 (after a loud warning) when it is still missing.
ensure_docker_binary() {
    local name=$1 path=$2 package=$3 why
    [[ -x $path ]] && return 0
    why=$(cannot_apt)
    if [[ -n $why ]]; then
        warn_docker "$name" "no $path, and $why" "$package" "$path"
        return 1
    fi
    if ! apt_install "$package"; then
        warn_docker "$name" "$APT_ERROR" "$package" "$path"
        return 1
    fi
    if [[ ! -x $path ]]; then
        warn_docker "$name" "apt-get installed $package, but there is still no $path" "$package" "$path"
        return 1
    fi
}

ensure_docker() {
    local ok=1
    ensure_docker_binary "The Docker engine (dockerd)" "$DOCKERD" docker.io || ok=0
    ensure_docker_binary "A static busybox" "$BUSYBOX" busybox-static || ok=0
    [[ $ok -eq 1 ]] || return 0
    log "Docker engine $("$DOCKERD" --version 2>/dev/null | awk '{ print $3 }' | tr -d ,) ready" \
        "($DOCKERD, busybox $BUSYBOX); the tests start their own private dockerd"
}

# ---------------------------------------------------------------- Jupyter

# A real Jupyter server (and a Python kernel) for tests/e2e/test_jupyter_e2e.py, which
# runs one in a job behind its port URL. In a virtual environment of its own, outside
# the project's: Jupyter is never a dependency of Corral.
JUPYTER_VENV=${CORRAL_TEST_JUPYTER_VENV:-/opt/corral-test/jupyter}
JUPYTER_PINS=(jupyter_server==2.21.1 ipykernel==7.4.0)

ensure_jupyter() {
    if [[ -x $JUPYTER_VENV/bin/jupyter-server && -x $JUPYTER_VENV/bin/python ]] &&
        "$JUPYTER_VENV/bin/python" -c 'import ipykernel' 2>/dev/null; then
        log "Jupyter server ready ($JUPYTER_VENV)"
        return 0
    fi
    log "installing Jupyter server into $JUPYTER_VENV (for the Jupyter port-URL test) ..."
    if python3 -m venv "$JUPYTER_VENV" >/dev/null 2>&1 &&
        "$JUPYTER_VENV/bin/pip" install -q "${JUPYTER_PINS[@]}" >/dev/null 2>&1; then
        log "Jupyter server ready ($JUPYTER_VENV)"
    else
        warn_loud "Jupyter server" "could not create $JUPYTER_VENV or pip-install ${JUPYTER_PINS[*]}" \
            "tests/e2e/test_jupyter_e2e.py will be SKIPPED: Jupyter behind a port URL is UNTESTED." \
            "Fix: python3 -m venv $JUPYTER_VENV && $JUPYTER_VENV/bin/pip install ${JUPYTER_PINS[*]}"
    fi
}

ensure_postgres
ensure_prometheus
ensure_chromium
ensure_docker
ensure_jupyter
