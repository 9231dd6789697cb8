#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite. The tests start their own brokers
# (mosquitto and the embedded one) and model server processes; nothing needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
