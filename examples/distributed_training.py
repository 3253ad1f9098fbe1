"""Data-parallel multi-task training on the selected backend.

The same script trains one `MultiTaskModel` with MGDA on several devices or
processes, and N replicas train the same model as one device on the global
batch (`keras_mtl.distribute` explains why):

    # TensorFlow: every local device (two logical CPUs on a CPU machine).
    KERAS_BACKEND=tensorflow python examples/distributed_training.py
    # JAX: every local device (two virtual CPUs on a CPU machine) ...
    KERAS_BACKEND=jax python examples/distributed_training.py
    # ... or two processes (run both, with process ids 0 and 1).
    KERAS_BACKEND=jax KERAS_DISTRIBUTION_JOB_ADDRESSES=127.0.0.1:1234 \\
        KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=0 \\
        python examples/distributed_training.py
    # PyTorch: two processes (gloo on CPU, NCCL on GPU).
    KERAS_BACKEND=torch torchrun --standalone --nproc_per_node=2 \\
        examples/distributed_training.py

Add `--mixed-precision` for `mixed_float16` (loss scaling per task).
"""

import argparse
import contextlib
import os
import tempfile

import keras

BACKEND = keras.config.backend()
if BACKEND == "jax" and "XLA_FLAGS" not in os.environ:
    # Two virtual devices on a CPU machine (read when JAX starts its CPU
    # client, which importing keras does not do).
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import keras_mtl  # noqa: E402


def strategy_scope():
    """What to build the model under, for the selected backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
            except RuntimeError:  # TensorFlow had already started.
                pass
        return tf.distribute.MirroredStrategy().scope()
    if BACKEND == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            auto_shard_dataset=keras_mtl.distribute.world_size() == 1))
    return contextlib.nullcontext()


def main(epochs=3, num_samples=8000, batch_size=256, mixed_precision=False):
    keras_mtl.distribute.initialize()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    x, y = keras_mtl.datasets.synthetic_task_correlation(
        num_samples=num_samples, num_features=32, correlation=0.5, seed=0)
    split = int(0.8 * num_samples)
    train = (x[:split], {t: v[:split] for t, v in y.items()})
    test = (x[split:], {t: v[split:] for t, v in y.items()})
    with strategy_scope():
        keras.utils.set_random_seed(0)  # The same start on every process.
        inputs = keras.Input((32,))
        h = keras.layers.Dense(64, activation="relu", name="features")(inputs)
        model = keras_mtl.MultiTaskModel(inputs, {
            t: keras.layers.Dense(1, dtype="float32", name=t)(h) for t in y})
        model.compile(keras.optimizers.Adam(1e-3),
                      loss={t: "mse" for t in y}, aggregator="mgda")
    if keras_mtl.distribute.world_size() > 1:  # PyTorch or JAX processes.
        data = {"x": keras_mtl.distribute.ShardedBatches(
            *train, batch_size=batch_size, shuffle=True, seed=0)}
        evaluation = {"x": keras_mtl.distribute.ShardedBatches(
            *test, batch_size=batch_size)}
    else:
        data = {"x": train[0], "y": train[1], "batch_size": batch_size}
        evaluation = {"x": test[0], "y": test[1], "batch_size": batch_size}
    model.fit(**data, epochs=epochs, shuffle=False,
              verbose=2 if keras_mtl.distribute.is_chief() else 0)
    results = model.evaluate(**evaluation, return_dict=True, verbose=0)
    path = keras_mtl.distribute.chief_path(
        os.path.join(tempfile.gettempdir(), "distributed_mtl.keras"))
    model.save(path)
    if keras_mtl.distribute.is_chief():
        print(f"{BACKEND}, {keras_mtl.distribute.world_size()} process(es): "
              "test " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()
                                  if k.endswith("_loss")))
        print(f"Saved to {path}")
    keras_mtl.distribute.shutdown()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mixed-precision", action="store_true")
    args = parser.parse_args()
    main(epochs=args.epochs, mixed_precision=args.mixed_precision)
