"""Data-parallel step time and communication of MultiTaskModel.

For each backend and N replicas (CPU devices or processes here, GPUs where
there are some), trains the same model (a Dense trunk and T heads, MSE,
SGD) on a per-replica batch of 64 samples, so the global batch is 64 N:

- `plain`: plain Keras multi-output training of the same model under the
  same distribution (TensorFlow MirroredStrategy, JAX DataParallel; the
  PyTorch backend has none in Keras, so its `plain` is one process);
- `mgda` (parameters mode) and `mgda_features` (features mode).

It reports the median step time, the bytes the multi-task step all-reduces
(or gathers) per step, counted from the shapes, and the measured time of an
all-reduce of that many bytes. Target: the N-replica multi-task step costs
at most 1.2x (its one-replica step + that all-reduce time). On a machine
whose replicas share cores, plain data-parallel Keras itself slows down with
N; the last column scales the one-replica step by plain Keras' slowdown
(PyTorch has no plain data-parallel Keras: its `plain` is one process, so
that column equals the previous one).

Usage:

    python benchmarks/scaling.py                     # all backends, N = 1, 2, 4
    python benchmarks/scaling.py --backends jax --replicas 1 2
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TASKS, WIDTH, HEAD, PER_REPLICA = 3, 512, 64, 64
FEATURES = 256


def build(mtl):
    import keras

    import keras_mtl

    keras.utils.set_random_seed(0)
    inputs = keras.Input((WIDTH,))
    h = keras.layers.Dense(WIDTH, activation="relu")(inputs)
    z = keras.layers.Dense(FEATURES, activation="relu", name="features")(h)
    outputs = {f"t{i}": keras.layers.Dense(1)(
        keras.layers.Dense(HEAD, activation="relu")(z)) for i in range(TASKS)}
    if mtl:
        return keras_mtl.MultiTaskModel(inputs, outputs)
    return keras.Model(inputs, outputs)


def communicated_bytes(model, mode, replicas, backend):
    """Bytes the multi-task step all-reduces (or all-gathers) per step."""
    if replicas == 1:
        return 0
    shared = sum(math.prod(v.shape) for v in model.shared_variables)
    total = sum(math.prod(v.shape) for v in model.trainable_variables)
    small = 2 * TASKS + 1  # Counts, loss sums, regularisation (one call).
    if mode == "parameters":
        floats = TASKS * shared + (total - shared) + small
    else:  # The features Jacobian is gathered, every gradient summed.
        floats = TASKS * PER_REPLICA * replicas * FEATURES + total + small
    if backend == "tensorflow":
        floats += total  # Keras' optimizer sums the gradients once more.
    return 4 * floats


def step_times(model, x, y, steps):
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(keras.ops.convert_to_numpy(logs["loss"]))
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    model.fit(x, y, batch_size=len(x) // steps, epochs=2, shuffle=False,
              verbose=0, callbacks=[timer])
    return statistics.median(timer.times[steps:])


def worker(backend, replicas, steps):
    """Runs in the process(es) of one (backend, N) measurement."""
    import keras
    import numpy as np

    import keras_mtl

    keras_mtl.distribute.initialize()
    rng = np.random.default_rng(0)
    local = PER_REPLICA * (replicas if backend != "torch" else 1)
    x = rng.normal(size=(local * steps, WIDTH)).astype("float32")
    y = {f"t{i}": rng.normal(size=(local * steps, 1)).astype("float32")
         for i in range(TASKS)}
    scope, allreduce = _distribution(backend, replicas)
    results = {}
    for variant in ("plain", "mgda", "mgda_features"):
        with scope():
            model = build(variant != "plain")
            if variant == "plain":
                model.compile(keras.optimizers.SGD(1e-3),
                              loss={k: "mse" for k in y})
            else:
                model.compile(keras.optimizers.SGD(1e-3),
                              loss={k: "mse" for k in y}, aggregator="mgda",
                              gradient_mode="features" if "features" in
                              variant else "parameters", features="features")
        results[variant] = {"step_ms": 1e3 * step_times(model, x, y, steps)}
        if variant != "plain":
            mode = "features" if "features" in variant else "parameters"
            size = communicated_bytes(model, mode, replicas, backend)
            results[variant]["bytes"] = size
            results[variant]["allreduce_ms"] = 1e3 * allreduce(size)
    if keras_mtl.distribute.is_chief():
        print("RESULT " + json.dumps(results), flush=True)
    keras_mtl.distribute.shutdown()


def _distribution(backend, replicas):
    """A scope factory for building under the distribution, and a function
    timing an all-reduce of a number of bytes."""
    import contextlib

    import keras
    import numpy as np

    def timed(fn, repeats=20):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(replicas)])

        def allreduce(size):
            if size == 0:
                return 0.0
            value = tf.zeros((size // 4,))

            @tf.function
            def run():
                return strategy.run(lambda: tf.distribute.get_replica_context()
                                    .all_reduce("SUM", value))

            return timed(lambda: [t.numpy() for t in
                                  strategy.experimental_local_results(run())])

        return strategy.scope, allreduce
    if backend == "jax":
        import jax

        devices = keras.distribution.list_devices("cpu")[:replicas]
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices))

        def allreduce(size):
            if size == 0:
                return 0.0
            mesh = jax.sharding.Mesh(np.array(jax.devices()[:replicas]),
                                     ("batch",))
            spec = jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec("batch"))
            data = jax.device_put(np.zeros((replicas, size // 4), "float32"),
                                  spec)
            total = jax.jit(lambda a: a.sum(0), out_shardings=jax.sharding.
                            NamedSharding(mesh, jax.sharding.PartitionSpec()))
            return timed(lambda: total(data).block_until_ready())

        return contextlib.nullcontext, allreduce

    import torch

    def allreduce(size):
        if size == 0:
            return 0.0
        value = torch.zeros(size // 4)
        return timed(lambda: torch.distributed.all_reduce(value))

    return contextlib.nullcontext, allreduce


def measure(backend, replicas, steps):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT,
               TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, __file__, "--worker", backend, str(replicas),
               "--steps", str(steps)]
    if backend == "jax":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={replicas}"
        env["JAX_PLATFORMS"] = "cpu"
    if backend == "torch":
        env["OMP_NUM_THREADS"] = "1"  # What torchrun gives each process.
    if backend == "torch" and replicas > 1:
        command = [sys.executable, "-m", "torch.distributed.run",
                   "--standalone", f"--nproc_per_node={replicas}"] + command[1:]
    out = subprocess.run(command, env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(out.stdout[-2000:] + out.stderr[-4000:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+",
                        default=["jax", "tensorflow", "torch"])
    parser.add_argument("--replicas", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--worker", nargs=2)
    args = parser.parse_args()
    if args.worker:
        backend, replicas = args.worker[0], int(args.worker[1])
        if backend == "tensorflow":
            import tensorflow as tf

            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        worker(backend, replicas, args.steps)
        return
    print("| backend | N | variant | step ms | plain ms | bytes/step | "
          "all-reduce ms | ratio to (1-replica step + all-reduce) | "
          "same, 1-replica step scaled as plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for backend in args.backends:
        one = None
        for replicas in args.replicas:
            result = measure(backend, replicas, args.steps)
            one = one or result
            plain = result["plain"]["step_ms"]
            for variant in ("mgda", "mgda_features"):
                r = result[variant]
                bound = one[variant]["step_ms"] + r["allreduce_ms"]
                # Replicas sharing a machine's cores slow each other down:
                # plain data-parallel Keras measures by how much.
                slowdown = plain / one["plain"]["step_ms"]
                shared = one[variant]["step_ms"] * slowdown + r["allreduce_ms"]
                print(f"| {backend} | {replicas} | {variant} | "
                      f"{r['step_ms']:.2f} | {plain:.2f} | {r['bytes']:,} | "
                      f"{r['allreduce_ms']:.2f} | "
                      f"{r['step_ms'] / bound:.2f} | "
                      f"{r['step_ms'] / shared:.2f} |", flush=True)


if __name__ == "__main__":
    main()
