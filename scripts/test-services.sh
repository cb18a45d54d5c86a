#!/usr/bin/env bash
# Make sure the servers the test suite uses are up: PostgreSQL on 127.0.0.1:5432, with a
# `credflow` role (password `credflow`, allowed to create databases) for the tests.
# Starts an installed cluster when it is down. Tests needing a server that is still not
# reachable fail with a message saying so.
set -euo pipefail

as_postgres() {
  if [[ "$(id -u)" == "0" ]]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}
as_root() {
  if [[ "$(id -u)" == "0" ]]; then "$@"; else sudo "$@"; fi
}

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "PostgreSQL is not reachable on 127.0.0.1:5432 (install it: apt-get install postgresql)" >&2
  exit 1
fi
as_postgres psql -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'credflow') THEN
    CREATE ROLE credflow LOGIN CREATEDB PASSWORD 'credflow';
  END IF;
END $$;
SQL
