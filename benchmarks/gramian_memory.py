"""Peak memory and step time of `gradient_mode="gramian"` on a transformer.

The trunk is a BERT-base-sized transformer encoder (token and position
embeddings, 12 blocks of width 768 with 12 heads and 3072-wide feed-forward
layers: about 108 M parameters, random weights) shared by T one-unit heads on
its mean-pooled output, MSE losses, Adam. Each variant runs in a fresh
process:

- `plain`: plain Keras multi-output training (the summed loss);
- `parameters`: `MultiTaskModel` with UPGrad, `gradient_mode="parameters"`
  (the `T x P` Jacobian of the shared variables);
- `gramian`: the same rule with `gradient_mode="gramian"` (the Gramian one
  column at a time, one row gradient at a time).

Memory is the process's peak resident set (max RSS) and, in the ratios, its
rise over the RSS once the backend is imported (before the model is built),
so that the backend's own footprint does not flatter the ratio; "steps' own
peak" restarts the peak after the first call, which on JAX and TensorFlow
also compiles the step (XLA's compiler holds memory of its own). Step time is
the median of the timed `train_on_batch` calls after one warm-up call (which
compiles on JAX and TensorFlow).

Usage:

    python benchmarks/gramian_memory.py                     # all backends
    python benchmarks/gramian_memory.py --backends torch --tasks 8
    python benchmarks/gramian_memory.py --layers 2 --width 256  # quick look

Threads are pinned to one core per process (see `one_core.py`). Target
(issue 19): peak memory at most 1.5x plain training at T = 8.
"""

import argparse
import json
import resource
import statistics
import sys
import time

from one_core import pin_to_one_core
from one_core import run_worker

VARIANTS = ("plain", "parameters", "gramian")


def _status_mb(field):
    """`VmRSS` (resident now) or `VmHWM` (its peak) of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak():
    """Restarts `VmHWM` from the current resident set (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(args):
    pin_to_one_core()  # Before the backend starts its threads.
    import keras
    import keras_hub
    import numpy as np

    import keras_mtl

    keras.ops.ones(())  # Starts the backend.
    base_mb = _status_mb("VmRSS")
    keras.utils.set_random_seed(0)
    tasks = [f"task_{i}" for i in range(args.tasks)]
    tokens = keras.Input((args.seq_len,), dtype="int32")
    h = keras_hub.layers.TokenAndPositionEmbedding(
        args.vocab, args.seq_len, args.width)(tokens)
    for _ in range(args.layers):
        h = keras_hub.layers.TransformerEncoder(
            4 * args.width, args.width // 64)(h)
    z = keras.layers.GlobalAveragePooling1D(name="z")(h)
    outputs = {t: keras.layers.Dense(1, name=t)(z) for t in tasks}
    losses = {t: "mse" for t in tasks}
    if args.variant == "plain":
        model = keras.Model(tokens, outputs)
        model.compile(keras.optimizers.Adam(1e-4), loss=losses,
                      jit_compile=args.jit_compile)
    else:
        model = keras_mtl.MultiTaskModel(tokens, outputs)
        model.compile(keras.optimizers.Adam(1e-4), loss=losses,
                      aggregator="upgrad", gradient_mode=args.variant,
                      jit_compile=args.jit_compile,
                      **({} if args.non_finite is None
                         else {"non_finite": args.non_finite}))
    rng = np.random.default_rng(0)
    x = rng.integers(0, args.vocab, (args.batch_size, args.seq_len),
                     dtype="int32")
    y = {t: rng.normal(size=(args.batch_size, 1)).astype("float32")
         for t in tasks}
    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        float(logs["loss"])  # Forces the step to finish.
        if i:
            times.append(time.perf_counter() - start)
        else:
            # The first call also compiles (JAX, TensorFlow): the steps'
            # own peak is measured from here.
            peak_reset = _reset_peak()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step_peak_mb = _status_mb("VmHWM") if peak_reset else float("nan")
    print(json.dumps({
        "median_s": statistics.median(times),
        "peak_rss_mb": peak_mb,
        "step_peak_rss_mb": step_peak_mb,
        "base_rss_mb": base_mb,
        "params_m": model.count_params() / 1e6,
    }))


def run_variant(backend, variant, tasks, args):
    command = [
        sys.executable, __file__, "--worker", "--variant", variant,
        "--tasks", str(tasks), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
        "--layers", str(args.layers), "--width", str(args.width),
        "--vocab", str(args.vocab), "--jit-compile", str(args.jit_compile),
        *(["--non-finite", args.non_finite] if args.non_finite else []),
    ]
    return run_worker(command, backend, f"{backend}/{variant}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+",
                        default=["jax", "tensorflow", "torch"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--jit-compile", default="auto",
                        type=lambda v: v if v == "auto" else v == "True",
                        help="compile(jit_compile=...): auto, True or False")
    parser.add_argument(
        "--non-finite", choices=["skip", "raise", "apply"],
        help="compile(non_finite=...); the default is the library's "
             "(\"skip\": the update is applied only when finite)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.tasks = args.tasks[0]
        return worker(args)

    print("| backend | T | variant | median step (s) | vs plain | peak RSS "
          "(MB) | rise over backend (MB) | vs plain | steps' own peak rise "
          "(MB) | vs plain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for backend in args.backends:
        for tasks in args.tasks:
            found = {v: run_variant(backend, v, tasks, args)
                     for v in args.variants}
            plain = found.get("plain")
            for variant, r in found.items():
                rise = r["peak_rss_mb"] - r["base_rss_mb"]
                step_rise = r["step_peak_rss_mb"] - r["base_rss_mb"]
                r.update(backend=backend, tasks=tasks, variant=variant,
                         rise_mb=rise, step_rise_mb=step_rise)
                nan = float("nan")
                if plain is not None:
                    r["time_ratio"] = r["median_s"] / plain["median_s"]
                    r["memory_ratio"] = rise / (
                        plain["peak_rss_mb"] - plain["base_rss_mb"])
                    r["step_memory_ratio"] = step_rise / (
                        plain["step_peak_rss_mb"] - plain["base_rss_mb"])
                results.append(r)
                print(f"| {backend} | {tasks} | {variant} | "
                      f"{r['median_s']:.2f} | "
                      f"{r.get('time_ratio', nan):.2f}x | "
                      f"{r['peak_rss_mb']:.0f} | {rise:.0f} | "
                      f"{r.get('memory_ratio', nan):.2f}x | "
                      f"{step_rise:.0f} | "
                      f"{r.get('step_memory_ratio', nan):.2f}x |",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
