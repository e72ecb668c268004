#!/usr/bin/env bash
# Set up this checkout and run it: `./dev.sh demo` buys, upscales and
# downloads one image on the embedded default; `./dev.sh test` runs the
# test suite on PostgreSQL and on SQLite. Both install what they need.
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PG_URL=${SMI_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

find_python() {
    local candidate
    for candidate in python3.12 python3.13; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        for candidate in 3.12 3.13; do
            local prefix
            prefix=$(pyenv prefix "$candidate" 2>/dev/null || true)
            if [ -n "$prefix" ] && [ -x "$prefix/bin/python" ]; then
                echo "$prefix/bin/python"
                return
            fi
        done
    fi
    echo "error: Python 3.12 or newer is required; install it (for example with pyenv)." >&2
    exit 1
}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$(find_python)" -m venv "$VENV"
    fi
    # A stamp of pyproject.toml's content skips the install when nothing changed.
    local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/pip" install --quiet --upgrade pip
        "$VENV/bin/pip" install --quiet -e ".[test]"
        touch "$stamp"
    fi
}

ensure_chromium() {
    if [ ! -x /usr/bin/chromium ]; then
        echo "Installing Debian's chromium for the browser tests..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
}

ensure_postgres() {
    if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
        echo "Starting PostgreSQL..."
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
        for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
    fi
}

ensure_redis() {
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "Starting Redis..."
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
        for _ in $(seq 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
    fi
}

case "${1:-}" in
    demo)
        shift
        setup
        exec "$VENV/bin/smi" demo "$@"
        ;;
    test)
        shift
        setup
        ensure_chromium
        ensure_postgres
        ensure_redis
        echo "== Test suite on PostgreSQL ($PG_URL)"
        DATABASE_URL="$PG_URL" "$VENV/bin/pytest" -q "$@"
        echo "== Test suite on SQLite"
        env -u DATABASE_URL "$VENV/bin/pytest" -q -m "not postgres" "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo [IMAGE] [--resolution 4x|8x] | ./dev.sh test [PYTEST ARGS]" >&2
        exit 2
        ;;
esac
