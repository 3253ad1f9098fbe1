"""One process, or one of several processes (`torchrun` on PyTorch, the
`KERAS_DISTRIBUTION_*` variables on JAX), training every case of
`runs.CASES` on `ShardedBatches`; the chief writes the snapshots.

Usage: `torch_script.py OUT_DIR STAGE [CASE ...]`, where STAGE is
`train` (the cases, then one epoch of the resume case saved to
`OUT_DIR/first.keras`) or `resume FILE` (loads FILE, trains one more epoch).
"""

import os
import sys

import keras
import numpy as np

import keras_mtl
from tests.distributed import runs

RESUME_CASE = ("pcgrad", "parameters")


def shard(data):
    return (keras_mtl.distribute.ShardedBatches(
        *data, batch_size=runs.GLOBAL_BATCH),)


def save(snapshot, path):
    if keras_mtl.distribute.is_chief():
        np.savez(path, **snapshot)


def main(out, stage, args):
    keras_mtl.distribute.initialize()
    if keras.config.backend() == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            auto_shard_dataset=False))
    data = runs.problem()
    if stage == "train":
        cases = [c for c in runs.backend_cases(keras.config.backend())
                 if not args or c[0] in args]
        for case in cases:
            snapshot = runs.snapshot(*runs.train(case, shard(data)))
            save(snapshot, os.path.join(out, "_".join(case) + ".npz"))
        model, _ = runs.train(RESUME_CASE, shard(data), epochs=1)
        model.save(keras_mtl.distribute.chief_path(
            os.path.join(out, "first.keras")))
    else:
        model = keras.saving.load_model(args[0])
        snapshot = runs.snapshot(*runs.train(RESUME_CASE, shard(data),
                                             epochs=1, model=model))
        save(snapshot, os.path.join(out, "resumed.npz"))
    keras_mtl.distribute.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
