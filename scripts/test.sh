#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite. The tests start their own brokers
# (mosquitto and the embedded one) and model server processes; nothing needs to be running.
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
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
