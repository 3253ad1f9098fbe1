"""Cost of the aggregation alone, for every registered aggregator.

Times `aggregator.aggregate(jacobian, losses, state, seed)` on a random
`(T, P)` Jacobian for T = 2 ... 32, compiled (`keras_mtl.src.backend.jit`:
XLA on JAX and TensorFlow, `torch.compile` on PyTorch, as `jit_compile=True`
runs them), or eagerly for a backend named with `:eager` (PyTorch's
default). Each backend runs in its own process, pinned to one thread.

    python benchmarks/aggregation_cost.py --backends jax --tasks 2 8 32
    python benchmarks/aggregation_cost.py --backends torch:eager torch \
        --methods mgda upgrad
"""

import argparse
import json
import statistics
import sys
import time

from one_core import pin_to_one_core
from one_core import run_worker


def worker(args):
    pin_to_one_core()  # Before the backend starts its threads.
    import keras
    import numpy as np

    from keras_mtl import aggregators
    from keras_mtl.src import backend

    results = {}
    for name in args.methods or sorted(aggregators.ALL_AGGREGATORS):
        for tasks in args.tasks:
            rng = np.random.default_rng(0)
            jacobian = rng.normal(size=(tasks, args.params)).astype("float32")
            losses = rng.uniform(0.5, 2.0, size=(tasks,)).astype("float32")
            agg = (aggregators.Constant([1.0] * tasks) if name == "constant"
                   else aggregators.get(name))
            state = agg.initial_state(tasks, args.params)
            state.update(agg.initial_parameters(tasks))
            if keras.config.backend() == "torch":
                seed = keras.random.SeedGenerator(0)
            else:
                seed = 0

            def run(j, losses, s):
                direction, weights, _ = agg.aggregate(j, losses, s, seed=seed)
                return direction, weights

            fn = run if args.eager else backend.jit(run)
            times = []
            for i in range(args.repeats + 3):
                start = time.perf_counter()
                out = fn(jacobian, losses, state)
                keras.ops.convert_to_numpy(out[1])
                if i >= 3:
                    times.append(time.perf_counter() - start)
            results[f"{name}/{tasks}"] = statistics.median(times)
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+",
                        default=["jax", "tensorflow", "torch"])
    parser.add_argument("--tasks", nargs="+", type=int,
                        default=[2, 4, 8, 16, 32])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--methods", nargs="+",
                        help="registry names (default: all of them)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    measured = {}
    for backend in args.backends:
        name, _, mode = backend.partition(":")
        command = [sys.executable, __file__, "--worker", "--params",
                   str(args.params), "--repeats", str(args.repeats), "--tasks",
                   *map(str, args.tasks)]
        if args.methods:
            command += ["--methods", *args.methods]
        if mode == "eager":
            command.append("--eager")
        measured[backend] = run_worker(command, name, backend)
    names = sorted({key.split("/")[0] for m in measured.values() for key in m})
    header = " | ".join(f"{b} T={t}" for b in args.backends for t in args.tasks)
    print(f"Aggregation time in ms, Jacobian (T, {args.params}), median of "
          f"{args.repeats} calls\n")
    print(f"| method | {header} |")
    print("|---|" + "---|" * (len(args.backends) * len(args.tasks)))
    for name in names:
        cells = " | ".join(
            f"{1000 * measured[b][f'{name}/{t}']:.2f}"
            for b in args.backends for t in args.tasks)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
