#!/usr/bin/env bash
# Wheels of what neojax imports and the lent GPU machine's image lacks, into .whl/ (git ignores it):
#   bash scripts/gpu_wheels.sh [PYTHON_VERSION]        (here, where pip reaches a registry; default 3.12)
# That machine reaches no registry, and its image already holds jax/jaxlib with CUDA, flax, optax,
# orbax, tokenizers, safetensors and numpy (the device tool's KINDS.md lists them): those are its
# own and are not carried. scripts/gpu_session.sh installs these with --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-3.12}"
packages=(grain==0.2.18 array_record==0.8.6 zstandard==0.25.0 ml_collections==1.1.0 tensorboardX==2.6.5
          fastapi==0.165.0 starlette==1.10.0 pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0
          typing-inspection==0.4.2 opentelemetry-api==1.45.2 uvicorn==0.54.0 portpicker==1.6.0)
rm -rf .whl && mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${packages[@]}"
du -sh .whl
