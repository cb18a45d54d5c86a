#!/usr/bin/env bash
# Make sure the servers the test suite uses are up:
# - PostgreSQL on 127.0.0.1:5432, with a `credflow` role (password `credflow`, allowed to create
#   databases) for the tests;
# - RabbitMQ on 127.0.0.1:5672 (user guest/guest), the Celery broker of the production-path test.
# Starts an installed server when it is down. Tests needing a server that is still not
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

# RabbitMQ opens its AMQP listener last, once the node has booted: a connection means ready.
rabbitmq_answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! rabbitmq_answers; then
  if [[ ! -x /usr/sbin/rabbitmq-server ]]; then
    echo "RabbitMQ is not reachable on 127.0.0.1:5672 and not installed" \
      "(scripts/system-deps.sh --test installs it: apt-get install rabbitmq-server)" >&2
    exit 1
  fi
  echo "starting RabbitMQ"
  # Debian's wrapper runs the node as the rabbitmq user; its log is /var/log/rabbitmq/. It
  # refuses to start a second node: one may be booting already (the package's own start).
  as_root /usr/sbin/rabbitmq-server -detached ||
    echo "rabbitmq-server -detached failed; waiting for a node that may be booting" >&2
  # A restart took 5 s here; a first boot (new database) on a slow machine takes longer.
  for _ in $(seq 1 240); do rabbitmq_answers && break; sleep 0.25; done
  if ! rabbitmq_answers; then
    echo "RabbitMQ did not answer on 127.0.0.1:5672 within 60 s of starting it" \
      "(see /var/log/rabbitmq/)" >&2
    exit 1
  fi
fi
