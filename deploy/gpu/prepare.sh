#!/usr/bin/env bash
# make gpu-check-prepare: what the GPU machine cannot fetch (it reaches no registry), made here:
#   .gpucheck/wheels  the project's dependencies its image lacks, at this .venv's versions, for
#                     CPython 3.12 on x86-64 (grpcio and protobuf too: the stubs need their own)
#   .gpucheck/data    Fashion-MNIST's test set and Set5, which the tests and the bench read
#   .gpuwheel/partNN  onnxruntime-gpu's 255 MB wheel in parts, by ../shared/tools/gpu-wheel-parts.sh
# All three are git-ignored; device calls carry them (README.md, "The CUDA path on a lent GPU").
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
PACKAGES="grpcio grpcio-health-checking grpcio-reflection protobuf pydantic pydantic-core
  pydantic-settings python-dotenv typing-inspection annotated-types typing-extensions tritonclient
  python-rapidjson ml-dtypes"
pins=$("$PY" -c 'import sys, importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in sys.argv[1:]))' $PACKAGES)
rm -rf .gpucheck && mkdir -p .gpucheck/wheels .gpucheck/data/fashion-mnist .gpucheck/data/sr-test
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64; do platforms="$platforms --platform $p"; done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $platforms -d .gpucheck/wheels $pins
FASHION=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
cp "$FASHION"/t10k-images-idx3-ubyte.gz "$FASHION"/t10k-labels-idx1-ubyte.gz .gpucheck/data/fashion-mnist/
cp -r ../shared/data/sr/test/Set5 .gpucheck/data/sr-test/
if [ -d .git ]; then
  ../shared/tools/gpu-wheel-parts.sh
else
  # A worktree's .git is a file, which the tool's exclude step cannot write to; device calls send
  # the session's own checkout in any case, so make the parts there.
  echo "prepare: .git is not a directory: run ../shared/tools/gpu-wheel-parts.sh in the main checkout" >&2
fi
du -sh .gpucheck .gpuwheel 2>/dev/null || true
