"""Tokens per second of MixtureOfExperts against dense feed-forward blocks.

Each backend runs in its own process (one thread, as the other benchmarks),
on inputs of shape (batch, tokens, d). Variants:

- `ffn_total`: Dense(E * h, relu) -> Dense(d): the same total hidden width,
  hence the same expert parameter count, as the mixture's E experts of
  hidden width h;
- `ffn_active1` / `ffn_active2`: Dense(k * h, relu) -> Dense(d), the
  same *active* FLOPs per token as top-1 / top-2 routing;
- `moe_dense`: `MixtureOfExperts(E, (h, d))`, dense softmax gating;
- `moe_top1`, `moe_top2`: sparse top-k routing;
- `moe_top2_cap`: top-2 with `capacity_factor=1.25`;
- `moe_top1_sparse`, `moe_top2_sparse`: top-1 / top-2 with
  `capacity_factor=1.25` and `dispatch="capacity"` (each expert computed on
  its routed tokens only).

A training step is `train_on_batch` (Adam, MSE; the mixture's balancing loss
is included); inference is `predict_on_batch`. All models are compiled and
warmed up first, then timed round-robin in `--repeats` rounds of `--steps`
steps each; the table gives the median tokens per second and the ratios to
`ffn_total` and to the FFN with the same active FLOPs (top-k variants),
measured in the same process.

Usage:

    python benchmarks/moe_throughput.py                  # all backends
    python benchmarks/moe_throughput.py --backends jax --steps 5
"""

import argparse
import json
import os
import statistics
import sys
import time

from one_core import pin_to_one_core
from one_core import run_worker

VARIANTS = ("ffn_total", "ffn_active1", "ffn_active2", "moe_dense",
            "moe_top1", "moe_top2", "moe_top2_cap", "moe_top1_sparse",
            "moe_top2_sparse")


def build(variant, args):
    import keras

    import keras_mtl

    d, h, E = args.dim, args.expert_hidden, args.num_experts
    inputs = keras.Input((args.tokens, d))
    if variant.startswith("ffn"):
        width = {"ffn_total": E * h, "ffn_active1": h,
                 "ffn_active2": 2 * h}[variant]
        hidden = keras.layers.Dense(width, activation="relu")(inputs)
        outputs = keras.layers.Dense(d)(hidden)
    else:
        top_k = {"moe_dense": None, "moe_top1": 1, "moe_top2": 2,
                 "moe_top2_cap": 2, "moe_top1_sparse": 1,
                 "moe_top2_sparse": 2}[variant]
        capacity = (1.25 if variant.endswith(("_cap", "_sparse"))
                    else None)
        dispatch = "capacity" if variant.endswith("_sparse") else "dense"
        outputs = keras_mtl.layers.MixtureOfExperts(
            E, expert_units=(h, d), top_k=top_k, capacity_factor=capacity,
            dispatch=dispatch,
        )(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    return model


def worker(args):
    pin_to_one_core()  # Before the backend starts its threads.
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.tokens, args.dim)
    x = rng.normal(size=shape).astype("float32")
    y = rng.normal(size=shape).astype("float32")
    models = {v: build(v, args) for v in args.variants}
    for model in models.values():  # compile and warm up
        for _ in range(2):
            model.train_on_batch(x, y)
            np.asarray(model.predict_on_batch(x))
    train = {v: [] for v in models}
    infer = {v: [] for v in models}
    for _ in range(args.repeats):
        for v, model in models.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                float(np.asarray(model.train_on_batch(x, y)))
                train[v].append(time.perf_counter() - start)
            for _ in range(args.steps):
                start = time.perf_counter()
                np.asarray(keras.ops.convert_to_numpy(
                    model.predict_on_batch(x)))
                infer[v].append(time.perf_counter() - start)
    tokens = args.batch_size * args.tokens
    print(json.dumps({
        v: {"train": tokens / statistics.median(train[v]),
            "infer": tokens / statistics.median(infer[v])}
        for v in models
    }))


def run_backend(backend, args):
    env = dict(os.environ)
    # Import keras_mtl from this checkout.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p])
    command = [
        sys.executable, __file__, "--worker",
        "--steps", str(args.steps), "--repeats", str(args.repeats),
        "--batch-size", str(args.batch_size), "--tokens", str(args.tokens),
        "--dim", str(args.dim), "--expert-hidden", str(args.expert_hidden),
        "--num-experts", str(args.num_experts),
        "--variants", *args.variants,
    ]
    start = time.perf_counter()
    result = run_worker(command, backend, backend, env)
    return result, time.perf_counter() - start


ACTIVE = {"moe_top1": "ffn_active1", "moe_top2": "ffn_active2",
          "moe_top2_cap": "ffn_active2", "moe_top1_sparse": "ffn_active1",
          "moe_top2_sparse": "ffn_active2"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+",
                        default=["jax", "tensorflow", "torch"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--expert-hidden", type=int, default=64)
    parser.add_argument("--num-experts", type=int, default=8)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    print(f"tokens per step {args.batch_size * args.tokens}, d={args.dim}, "
          f"E={args.num_experts}, expert hidden h={args.expert_hidden}")
    print("| backend | variant | train tok/s | vs ffn_total | vs same-FLOPs "
          "FFN | inference tok/s | vs ffn_total | vs same-FLOPs FFN |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for backend in args.backends:
        measured, seconds = run_backend(backend, args)
        results[backend] = measured
        for v, m in measured.items():
            cells = []
            for phase in ("train", "infer"):
                total = measured.get("ffn_total", {}).get(phase)
                active = measured.get(ACTIVE.get(v), {}).get(phase)
                cells += [
                    f"{m[phase]:,.0f}",
                    f"{m[phase] / total:.2f}x" if total else "",
                    f"{m[phase] / active:.2f}x" if active else "",
                ]
            print(f"| {backend} | {v} | " + " | ".join(cells) + " |",
                  flush=True)
        print(f"<!-- {backend}: {seconds:.0f} s -->", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
