"""Step time of MultiTaskModel relative to plain Keras multi-output training.

For each backend and number of tasks T, every variant trains the same model
(a Dense trunk and T two-layer heads, MSE losses, Adam) with `fit`, each in a
fresh process so that its peak memory (max RSS) is its own. The median step
time is measured by a callback that forces every step to finish, after a
warm-up epoch. Ratios are taken against plain Keras training of the same
model in the same run ("plain"), and for parameter mode also against the
cost of one forward plus T backward passes, estimated from the same run as
`F + T * (plain - F)` where `F` is the measured forward (predict) time.

Usage:

    python benchmarks/step_time.py  # all backends, T = 2, 3, 8
    python benchmarks/step_time.py --backends jax --tasks 3 --steps 30
    python benchmarks/step_time.py --variants all --tasks 3   # every method
    python benchmarks/step_time.py --processes 3              # fastest of 3
    python benchmarks/step_time.py --non-finite apply   # no finiteness check

Threads are pinned to one per backend (small CI machines oversubscribe
otherwise). Targets: `sum` <= 1.05x plain; parameter mode <= 1.2x of
(F + T backward); features mode <= 1.3x plain.
"""

import argparse
import json
import statistics
import sys
import time

from one_core import pin_to_one_core
from one_core import run_worker

VARIANTS = {
    # name: (aggregator, gradient_mode, vectorize[, more compile args])
    "plain": None,
    "forward": None,
    "sum": ("sum", "parameters", False),
    "mgda": ("mgda", "parameters", False),
    "mgda_vec": ("mgda", "parameters", True),
    "mgda_feat": ("mgda", "features", False),
    "pcgrad": ("pcgrad", "parameters", False),
    "pcgrad_vec": ("pcgrad", "parameters", True),
    "pcgrad_feat": ("pcgrad", "features", False),
    # F-MTL: each task's gradient at its own ascent point.
    "mgda_sharp": ("mgda", "parameters", False, {"sharpness": "task"}),
    "pcgrad_sharp": ("pcgrad", "parameters", False, {"sharpness": "task"}),
    # Rep-MTL: saliency regularisers by double backpropagation.
    "mgda_feat_rep": ("mgda", "features", False,
                      {"saliency_regularizer": "rep_mtl"}),
}


def worker(args):
    pin_to_one_core()  # Before the backend starts its threads.
    import resource

    import keras
    import numpy as np

    import keras_mtl

    keras.utils.set_random_seed(0)
    tasks = [f"task_{i}" for i in range(args.tasks)]
    inputs = keras.Input((args.input_dim,))
    h = keras.layers.Dense(args.width, activation="relu")(inputs)
    h = keras.layers.Dense(args.width, activation="relu")(h)
    z = keras.layers.Dense(args.features_dim, activation="relu", name="z")(h)
    outputs = {
        t: keras.layers.Dense(1, name=f"{t}_out")(
            keras.layers.Dense(64, activation="relu", name=f"{t}_hidden")(z)
        )
        for t in tasks
    }
    rng = np.random.default_rng(0)
    steps_per_epoch = args.steps
    n = args.batch_size * steps_per_epoch
    x = rng.normal(size=(n, args.input_dim)).astype("float32")
    y = {t: rng.normal(size=(n, 1)).astype("float32") for t in tasks}
    losses = {t: "mse" for t in tasks}

    variant = VARIANTS.get(args.variant, (args.variant, "parameters", False))
    if variant is None:
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-3), loss=losses)
    else:
        aggregator, mode, vectorize, *more = variant
        model = keras_mtl.MultiTaskModel(inputs, outputs)
        model.compile(
            keras.optimizers.Adam(1e-3),
            loss=losses,
            aggregator=aggregator,
            gradient_mode=mode,
            features="z",
            vectorize=vectorize,
            **(more[0] if more else {}),
            **({} if args.non_finite is None
               else {"non_finite": args.non_finite}),
        )

    if args.variant == "forward":
        batch = x[: args.batch_size]
        times = []
        for i in range(args.steps * 2):
            start = time.perf_counter()
            out = model.predict_on_batch(batch)
            np.asarray(keras.ops.convert_to_numpy(out[tasks[0]]))
            if i >= args.steps:
                times.append(time.perf_counter() - start)
    else:

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times, self.epoch, self.start = [], 0, 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_begin(self, batch, logs=None):
                self.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])  # Forces the step to finish.
                if self.epoch > 0 and batch > 0:
                    self.times.append(time.perf_counter() - self.start)

        timer = Timer()
        model.fit(
            x, y, batch_size=args.batch_size, epochs=3, verbose=0,
            shuffle=False, callbacks=[timer],
        )
        times = timer.times
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "median_s": statistics.median(times),
        "peak_rss_mb": peak_mb,
        "steps_timed": len(times),
    }))


def run_variant(backend, variant, args):
    command = [
        sys.executable, __file__, "--worker", "--variant", variant,
        "--tasks", str(args.tasks_now), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--width", str(args.width),
        "--features-dim", str(args.features_dim),
        "--input-dim", str(args.input_dim),
        *(["--non-finite", args.non_finite] if args.non_finite else []),
    ]
    return run_worker(command, backend, f"{backend}/{variant}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+",
                        default=["jax", "tensorflow", "torch"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[2, 3, 8])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--processes", type=int, default=1,
        help="fresh processes per variant, taken in turns; the fastest one "
             "is kept (on a shared machine some processes run every step "
             "2-3 ms slower)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--features-dim", type=int, default=256)
    parser.add_argument("--input-dim", type=int, default=64)
    parser.add_argument(
        "--non-finite", choices=["skip", "raise", "apply"],
        help="compile(non_finite=...); the default is the library's "
             "(\"skip\": each step checks its losses and gradients)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.tasks = args.tasks[0]
        return worker(args)

    if "all" in args.variants:
        # Every registered aggregator in parameter mode.
        from keras_mtl.aggregators import ALL_AGGREGATORS

        args.variants = [v for v in args.variants if v != "all"] + sorted(
            ALL_AGGREGATORS.keys() - {"constant"})
    for name in args.variants:  # Any other registered aggregator name.
        VARIANTS.setdefault(name, (name, "parameters", False))
    needed = set(args.variants) | {"plain", "forward"}
    results = []
    print("| backend | T | variant | median step (ms) | vs plain | "
          "vs F+T*B | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends:
        for tasks in args.tasks:
            args.tasks_now = tasks
            # Round-robin over the variants, one fresh process each time;
            # keep each variant's fastest process (see `--processes`).
            runs = {v: [] for v in VARIANTS if v in needed}
            for _ in range(args.processes):
                for variant in runs:
                    runs[variant].append(run_variant(backend, variant, args))
            measured = {v: min(r, key=lambda m: m["median_s"])
                        for v, r in runs.items()}
            plain = measured["plain"]["median_s"]
            forward = measured["forward"]["median_s"]
            reference = forward + tasks * max(plain - forward, 1e-9)
            for variant, m in measured.items():
                if variant == "forward":
                    continue
                vs_ref = (f"{m['median_s'] / reference:.2f}x"
                          if VARIANTS[variant] and VARIANTS[variant][1]
                          == "parameters" and variant != "sum" else "")
                print(f"| {backend} | {tasks} | {variant} | "
                      f"{1000 * m['median_s']:.2f} | "
                      f"{m['median_s'] / plain:.2f}x | {vs_ref} | "
                      f"{m['peak_rss_mb']:.0f} |", flush=True)
                results.append({"backend": backend, "tasks": tasks,
                                "variant": variant, **m,
                                "ratio_plain": m["median_s"] / plain,
                                "ratio_reference": m["median_s"] / reference})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
