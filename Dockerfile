# syntax=docker/dockerfile:1
# onnx-serve: the KServe V2 service on ONNX Runtime, REST on 8000, gRPC on 8001, metrics on 8002.
#
#   docker build -t onnx-serve .
#   docker run --rm -p 8000-8002:8000-8002 onnx-serve                 # CPU
#   docker run --rm --gpus all -p 8000-8002:8000-8002 onnx-serve      # CUDA when usable
#
# The runtime base carries the CUDA 13 runtime, cuBLAS and cuDNN 9 that onnxruntime-gpu's CUDA
# provider loads; on a host without an NVIDIA GPU the server logs why and runs on CPU.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG BUILD_IMAGE=ubuntu:24.04

# ---- build: a virtual environment with the service and its runtime dependencies only -------------
# Same Ubuntu release as the runtime base, so the venv's /usr/bin/python3.12 exists in both.
FROM ${BUILD_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# grpcio-tools lives in its own throwaway venv: it generates the stubs and stays in this stage.
RUN python3 -m venv /opt/codegen \
 && /opt/codegen/bin/pip install grpcio-tools==1.81.1
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY service/ service/
# Every proto: grpc_service imports model_config, and the server serves the task API too. The
# check imports what the server imports, so a stub or dependency missing fails the build, not the pod.
RUN /opt/codegen/bin/python -m grpc_tools.protoc -Iservice/_proto=protos \
      --python_out=. --pyi_out=. --grpc_python_out=. \
      protos/grpc_service.proto protos/model_config.proto protos/task_service.proto \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -c "import service.app"

# ---- runtime ------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin onnxserve
COPY --from=build /opt/venv /opt/venv
# Bundled models as the default repository; mount another over /models to serve your own.
COPY models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ONNXSERVE_LOG_FORMAT=json \
    ONNXSERVE_HTTP_PORT=8000 \
    ONNXSERVE_GRPC_PORT=8001 \
    ONNXSERVE_METRICS_PORT=8002
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001 8002
# The gRPC health service (service ""): SERVING once every startup model is ready, NOT_SERVING
# while draining. No grpc_health_probe binary needed: grpcio-health-checking is already installed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os,sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel('127.0.0.1:'+os.environ.get('ONNXSERVE_GRPC_PORT','8001'));r=g.HealthStub(c).Check(h.HealthCheckRequest(service=''),timeout=4);sys.exit(r.status!=h.HealthCheckResponse.SERVING)"]
# SIGTERM drains: in-flight calls finish within --shutdown-grace, then the process exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve", "--models", "/models"]
