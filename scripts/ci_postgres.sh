#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and CI (the shared storage of `circuitdag sweep`).
#
#   eval "$(bash scripts/ci_postgres.sh start)"   # sets POSTGRES_URL and POSTGRES_DIR
#   circuitdag sweep --storage "$POSTGRES_URL" --study demo --trials 0 --ablation zero --out runs/demo
#   circuitdag sweep-worker --storage "$POSTGRES_URL" --study demo --trials 10 &   # as many as you like
#   bash scripts/ci_postgres.sh stop "$POSTGRES_DIR"
#
# `start` installs the Debian package `postgresql` with apt-get if its programs are missing,
# creates a cluster in a new temporary directory, starts it on a free localhost port (as the
# `postgres` user when run as root: PostgreSQL refuses to run as root) with trust
# authentication and durability off (it is thrown away), creates the database `circuitdag`,
# and prints two lines, POSTGRES_URL=... and POSTGRES_DIR=...; everything else goes to
# stderr or $POSTGRES_DIR/server.log. `stop DIR` stops that server and deletes DIR.
#
# Exit status: 0 ok; 3 PostgreSQL is missing and cannot be installed here (no apt-get, or
# apt-get failed); anything else is a real failure.
set -euo pipefail

say() { echo "ci_postgres: $*" >&2; }

find_bin() {
    local initdb
    initdb=$(command -v initdb 2>/dev/null || true)
    if [[ -z "$initdb" ]]; then
        initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    [[ -n "$initdb" && -x "$initdb" ]] && dirname "$(readlink -f "$initdb")"
}

install_postgres() {
    if ! command -v apt-get >/dev/null 2>&1; then
        say "PostgreSQL is not installed and there is no apt-get to install it; install PostgreSQL (initdb, pg_ctl) and rerun"
        exit 3
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            say "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
            exit 3
        fi
    fi
    say "installing the Debian package postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -q postgresql >&2; then
        "${sudo[@]}" apt-get update -q >&2 || true
        "${sudo[@]}" apt-get install -y -q postgresql >&2 || { say "apt-get install postgresql failed"; exit 3; }
    fi
}

free_port() {
    python3 - <<'EOF' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

# Run a server program as the cluster's owner: ourselves, or `postgres` when we are root.
as_owner() {
    if [[ $(id -u) -ne 0 ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$OWNER" -- "$@"
    else
        su "$OWNER" -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

start() {
    local bin
    bin=$(find_bin) || true
    if [[ -z "$bin" ]]; then
        install_postgres
        bin=$(find_bin) || { say "installed postgresql but found no initdb under /usr/lib/postgresql/*/bin"; exit 1; }
    fi
    OWNER=$(id -un)
    if [[ $(id -u) -eq 0 ]]; then
        OWNER=postgres
        if ! id "$OWNER" >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /usr/sbin/nologin "$OWNER"
        fi
    fi
    # A fresh directory the owner can reach (not under a root-only pytest tmp dir).
    local dir
    dir=$(mktemp -d /tmp/circuitdag-pg.XXXXXX)
    chmod 755 "$dir"
    [[ $(id -u) -eq 0 ]] && chown "$OWNER" "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U circuitdag --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; say "initdb failed"; exit 1; }
    local port attempt
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            >&2; then
            break
        fi
        say "start on port $port failed (attempt $attempt); see $dir/server.log"
        port=""
    done
    if [[ -z "$port" ]]; then
        tail -n 20 "$dir/server.log" >&2 || true
        exit 1
    fi
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U circuitdag circuitdag >&2
    echo "POSTGRES_URL=postgresql://circuitdag@127.0.0.1:$port/circuitdag"
    echo "POSTGRES_DIR=$dir"
}

stop() {
    local dir=${1:?usage: ci_postgres.sh stop DIR}
    [[ -d "$dir/data" ]] || { say "$dir holds no cluster"; exit 1; }
    local bin
    bin=$(find_bin)
    OWNER=$(stat -c %U "$dir/data")
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) shift; stop "$@" ;;
    *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
