# dicom_agent image: one image, every role (scp, worker, exporter, web) chosen by the command.
#   CPU (default):  docker build -t dicom-agent .
#   GPU:            docker build -t dicom-agent:gpu --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                                --build-arg ORT=gpu .
# The GPU build installs onnxruntime-gpu on a CUDA 12 + cuDNN 9 runtime base; everything else is the same.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG ORT=cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DICOM_AGENT_STORAGE_DIR=/data/storage

# Ubuntu CUDA bases have no python3.11 by default; the slim base already has it.
RUN if ! command -v python3.11 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv && \
      rm -rf /var/lib/apt/lists/*; \
    fi && \
    python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# CPU-only torch first (a bare `torch` would pull a multi-GB CUDA build; the model runs through onnxruntime).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md constraints.txt ./
COPY dicom_agent ./dicom_agent
COPY models ./models
COPY migrations ./migrations
# editable: migrations/ and models/bundled/ stay where the code expects them (/app)
RUN pip install -c constraints.txt -e ".[${ORT}]" flower && \
    useradd --system --uid 10001 --home /data dicom && mkdir -p /data/storage && chown -R dicom /data
USER dicom
EXPOSE 11112 8080 9100
ENTRYPOINT ["dicom-agent"]
CMD ["serve"]
