#!/usr/bin/env bash
# make gpu-check: the CUDA path proven on a lent GPU machine (DEVICE=cuda, the default), or
# rehearsed on this one (DEVICE=cpu, with the project's .venv). Figures go to $OUT.
#
# On the GPU machine this is the last of a series of device calls (README.md, "The CUDA path on a
# lent GPU"): the calls before it copied onnxruntime-gpu's wheel, in parts, to /tmp/gw; this one
# carries .gpucheck (dependency wheels and test data, from deploy/gpu/prepare.sh) and
# service/_proto (the generated stubs). Arguments go to `python -m loadtest.gpu_check`.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-loadtest/results/gpu-check-$DEVICE}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  PY=${PY:-python3}
  shopt -s nullglob
  parts=(/tmp/gw/part*)
  wheels=(.gpucheck/wheels/*.whl)
  if [ ${#parts[@]} -eq 0 ] || [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu-check: need /tmp/gw/part* (earlier calls) and .gpucheck/wheels (carry .gpucheck)" >&2
    exit 2
  fi
  # (a) onnxruntime-gpu and the project's pinned dependencies into /tmp/site, ahead of the
  # image's own packages (its onnxruntime is the CPU build).
  cat "${parts[@]}" > /tmp/gw/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /tmp/gw/*.whl "${wheels[@]}"
  export PYTHONPATH=/tmp/site
  # The tests read Fashion-MNIST and the SR test photos where a developer machine has them.
  export FASHION_MNIST_DIR=$PWD/.gpucheck/data/fashion-mnist
  if [ ! -e ../shared/data/sr/test ]; then
    mkdir -p ../shared/data/sr && ln -s "$PWD/.gpucheck/data/sr-test" ../shared/data/sr/test
  fi
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
else
  PY=${PY:-.venv/bin/python}
fi
exec "$PY" -m loadtest.gpu_check --device "$DEVICE" --out "$OUT" "$@"
