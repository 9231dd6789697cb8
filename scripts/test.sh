#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), run the gates, then the whole test suite. The tests start their
# own brokers (mosquitto and the embedded one), PostgreSQL clusters (initdb + pg_ctl in a
# temporary directory) and model server processes; nothing needs to be
# running. Gates (configured in pyproject.toml): ruff (lint, import order, pyupgrade), mypy
# (strict for the protocol, bus, transports and router; checked for the rest), lint-imports (the
# layers of docs/architecture.md). FOA_SKIP_GATES=1 runs the tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# the console's browser tests (tests/test_ui_browser.py) drive Debian's chromium with Playwright
# (never `playwright install`: its browser download needs the internet); quick when present
if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver; } >/dev/null \
    || echo "[test] could not install chromium: the browser tests will be skipped" >&2
fi
.venv/bin/python -c "import playwright" >/dev/null 2>&1 || .venv/bin/python -m pip install -q "playwright>=1.40"
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
if [ "${FOA_SKIP_GATES:-0}" != "1" ]; then
  gate() { printf '\033[1m[gate]\033[0m %s\n' "$*" >&2; "$@"; }
  gate .venv/bin/ruff check .
  gate .venv/bin/mypy
  gate .venv/bin/lint-imports
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
