#!/usr/bin/env bash
# Runs the test suite on the JAX, TensorFlow and PyTorch backends in turn.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for backend in jax tensorflow torch; do
    echo "=== KERAS_BACKEND=${backend} ==="
    KERAS_BACKEND="${backend}" python -m pytest -q -p no:cacheprovider tests \
        || status=1
done
exit "${status}"
