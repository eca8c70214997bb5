#!/usr/bin/env bash
# Make sure the programs the test suite needs are installed. Called by `make test`.
#
# Today that is PostgreSQL: the suite runs every database test on SQLite *and*
# PostgreSQL, and starts its own private, throw-away PostgreSQL server per test
# session (tests/support/postgres.py). So this script only *installs* the server
# binaries; it never starts a server -- the machines are shared, and a system
# cluster on port 5432 is exactly what the tests avoid.
#
# When PostgreSQL is missing and cannot be installed (not root, apt fails), it
# prints a loud warning and exits 0: the PostgreSQL tests will then be skipped,
# and pytest repeats the warning in its summary. It never fails the build by
# itself. Idempotent; takes milliseconds when everything is present.
set -euo pipefail

PG_LIB=/usr/lib/postgresql

log() { printf 'test-services: %s\n' "$*"; }

warn_loud() {
    {
        echo
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        echo "!! WARNING: PostgreSQL is NOT installed, and this script could not install it:"
        echo "!!     $1"
        echo "!! Every PostgreSQL test will be SKIPPED: the PostgreSQL back-end is UNTESTED."
        echo "!! Fix: run scripts/test-services.sh as root on a machine that can reach the"
        echo "!!      Debian package mirror (it runs: apt-get install postgresql),"
        echo "!!      or install PostgreSQL so that $PG_LIB/<version>/bin/initdb exists."
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        echo
    } >&2
}

# The newest $PG_LIB/<version>/bin that has initdb, or nothing.
pg_bindir() {
    local initdb newest=""
    for initdb in "$PG_LIB"/*/bin/initdb; do
        [[ -x $initdb ]] && newest+="${initdb%/initdb}"$'\n'
    done
    [[ -n $newest ]] && printf '%s' "$newest" | sort -V | tail -n 1
    return 0
}

# apt would otherwise start (and enable) the distribution's cluster on port 5432
# as part of the install; a policy-rc.d that answers 101 forbids that. An existing
# policy-rc.d (Docker images ship one) is left alone.
POLICY=/usr/sbin/policy-rc.d
remove_policy() { rm -f "$POLICY"; }

install_postgres() {
    local aptlog
    aptlog=$(mktemp -t corral-apt-XXXXXX.log)
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\n# temporary, from corral scripts/test-services.sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        trap remove_policy EXIT
    fi
    log "PostgreSQL missing; installing it with apt-get (log: $aptlog) ..."
    if ! {
        apt-get -q -o DPkg::Lock::Timeout=300 update &&
            DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
                install --no-install-recommends postgresql
    } >"$aptlog" 2>&1; then
        tail -n 15 "$aptlog" >&2 || true
        warn_loud "apt-get failed (see $aptlog)"
        return 1
    fi
    rm -f "$aptlog"
}

bindir=$(pg_bindir)
if [[ -z $bindir ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        warn_loud "no $PG_LIB/*/bin/initdb, and installing needs root (we are $(id -un))"
        exit 0
    fi
    if ! command -v apt-get >/dev/null; then
        warn_loud "no $PG_LIB/*/bin/initdb, and there is no apt-get on this machine"
        exit 0
    fi
    install_postgres || exit 0
    bindir=$(pg_bindir)
    if [[ -z $bindir ]]; then
        warn_loud "apt-get installed postgresql, but there is still no $PG_LIB/*/bin/initdb"
        exit 0
    fi
fi

# initdb refuses to run as root, so as root the tests run the server as `postgres`.
if [[ $(id -u) -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
    log "creating the 'postgres' system user (the tests run initdb/postgres as it, not as root)"
    if ! useradd --system --user-group --home-dir /var/lib/postgresql \
        --shell /usr/sbin/nologin postgres; then
        warn_loud "there is no 'postgres' user to run the server as, and useradd failed"
        exit 0
    fi
fi

log "PostgreSQL $(basename "$(dirname "$bindir")") ready ($bindir); the tests start their own server"
