#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite. The tests start their own brokers
# (mosquitto and the embedded one), PostgreSQL clusters (initdb + pg_ctl in a temporary
# directory) and model server processes; nothing needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# PostgreSQL for the shared job store's tests (the main job's set-up does not need it)
pg_bin() { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
if ! pg_bin && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[test] installing postgresql (apt)" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
# the Debian package starts a system cluster on 5432; the tests start their own
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
  systemctl stop postgresql 2>/dev/null || true
fi
.venv/bin/python -c "import psycopg" >/dev/null 2>&1 || .venv/bin/python -m pip install -q -e ".[postgres]"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
