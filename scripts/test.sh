#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), run the gates, then the whole test suite. The tests start their
# own brokers (mosquitto and the embedded one) and model server processes; nothing needs to be
# running. Gates (configured in pyproject.toml): ruff (lint, import order, pyupgrade), mypy
# (strict for the protocol, bus, transports and router; checked for the rest), lint-imports (the
# layers of docs/architecture.md). FOA_SKIP_GATES=1 runs the tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${FOA_SKIP_GATES:-0}" != "1" ]; then
  gate() { printf '\033[1m[gate]\033[0m %s\n' "$*" >&2; "$@"; }
  gate .venv/bin/ruff check .
  gate .venv/bin/mypy
  gate .venv/bin/lint-imports
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
