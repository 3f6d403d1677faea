# syntax=docker/dockerfile:1
# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK: Kubernetes probes (the chart) watch the operator; the trainer is a batch job
# Two images from one file:
#   docker build --target operator -t ghcr.io/peftjob/operator:0.1.0 .   slim Python, kopf, no torch
#   docker build --target trainer  -t ghcr.io/peftjob/trainer:0.1.0  .   CUDA PyTorch + DeepSpeed + the trainer
# Every install step is scripts/install.sh, the same script CI runs (`make setup`), so CI proves what the images get.

# ------------------------------------------------------------------------------------------- operator
FROM python:3.11-slim-bookworm AS operator-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/
COPY trainer/ trainer/
COPY operator/ operator/
RUN python -m venv /opt/peftjob && scripts/install.sh operator /opt/peftjob/bin/python

FROM python:3.11-slim-bookworm AS operator
LABEL org.opencontainers.image.title="peftjob-operator" \
      org.opencontainers.image.description="Kubernetes operator for PEFTJob: DeepSpeed ZeRO PEFT training gangs" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=operator-build /opt/peftjob /opt/peftjob
ENV PATH=/opt/peftjob/bin:${PATH} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Numeric, non-root; the chart runs it with a read-only root filesystem and a /tmp emptyDir.
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "peftjob_operator"]

# -------------------------------------------------------------------------------------------- trainer
# The CUDA PyTorch base brings a CUDA build of torch; PEFTJOB_TORCH_SPEC=torch below keeps it (nothing re-downloaded).
# A -devel base has nvcc, which DeepSpeed needs to JIT-build its fused GPU ops on first use.
FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-devel AS trainer
LABEL org.opencontainers.image.title="peftjob-trainer" \
      org.opencontainers.image.description="PEFTJob worker: PEFT methods on a frozen backbone under DeepSpeed ZeRO" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PEFTJOB_TORCH_SPEC=torch
WORKDIR /opt/peftjob/src
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/
COPY trainer/ trainer/
COPY operator/ operator/
RUN scripts/install.sh trainer python \
    && useradd --no-log-init --create-home --uid 10001 --user-group peftjob
# Caches (Hugging Face downloads, DeepSpeed's JIT-built ops) live in the non-root user's home.
ENV HOME=/home/peftjob HF_HOME=/home/peftjob/.cache/huggingface \
    TORCH_EXTENSIONS_DIR=/home/peftjob/.cache/torch_extensions PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/peftjob
ENTRYPOINT ["python", "-m", "peftjob_trainer"]
