#!/usr/bin/env bash
# Creates .venv with keras_mtl, all three backends (CPU builds) and test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: an unpinned `torch` would pull a CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all,test]"
