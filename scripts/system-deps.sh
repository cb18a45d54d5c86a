#!/usr/bin/env bash
# Install the Debian packages credflow needs, only those missing. Usage: system-deps.sh [--test]
#   (always)  openssh-server (the local SFTP server), gnupg (provider file decryption),
#             libreoffice-writer-nogui (PDF renditions of office and text documents)
#   --test    postgresql (the production-path tests: SQL tables and Dagster storage),
#             rabbitmq-server (the Celery broker of the production-path test: a real worker),
#             chromium (the headless browser of the Dagster UI tests: /usr/bin/chromium),
#             sqlite3 (the shell whose `.import --csv` is bench/feed_ingest.py's limit)
set -euo pipefail

need=()
command -v /usr/sbin/sshd >/dev/null 2>&1 || need+=(openssh-server)
command -v gpg >/dev/null 2>&1 || need+=(gnupg)
command -v gpgconf >/dev/null 2>&1 || need+=(gnupg)
command -v soffice >/dev/null 2>&1 || need+=(libreoffice-writer-nogui)
if [[ "${1:-}" == "--test" ]]; then
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
  # By path: /usr/sbin is not on a non-root user's PATH.
  [[ -x /usr/sbin/rabbitmq-server ]] || need+=(rabbitmq-server)
  [[ -x /usr/bin/chromium ]] || need+=(chromium)
  command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
fi
if [[ ${#need[@]} -eq 0 ]]; then
  exit 0
fi

sudo=""
if [[ "$(id -u)" != "0" ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
