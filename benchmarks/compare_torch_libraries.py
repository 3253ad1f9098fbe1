"""Step time of keras_mtl against TorchJD and LibMTL, per method.

All train the same architecture (Dense trunk 64-512-512-256, one 256-64-1
head per task, MSE, Adam, batch 256) with per-task gradients of the shared
parameters: keras_mtl through `MultiTaskModel.fit` on the Keras backend that
`KERAS_BACKEND` names (PyTorch by default), TorchJD through its documented
loop (`mtl_backward` then `jac_to_grad`, then `optimizer.step()`), LibMTL
through the body of its `Trainer.train` loop (forward,
`model.backward(losses, **weight_args)`, `optimizer.step()`) on its
hard-parameter-sharing architecture (its `Trainer` hard-codes a CUDA device,
so the model is assembled the way `Trainer._prepare_model` does). The two
peers always run on PyTorch, in the same process as keras_mtl.

Median step time after warm-up, on one CPU core (`one_core.py`) where there
is no GPU; the libraries take turns for
`--rounds` rounds and the median round is reported. All run on the GPU when
PyTorch sees one (`KERAS_TORCH_DEVICE=cpu` keeps the PyTorch runs on the
CPU); each timed step ends by reading its loss on the host, which waits for
the GPU. Neither peer is a dependency of keras_mtl; install them only to run
this script (PyPI's LibMTL 1.1.5 predates Nash-MTL, MoCo, DB-MTL, ...):

    pip install --target /tmp/tjd "torchjd[full]==0.18.0"
    pip install --no-deps --target /tmp/libmtl LibMTL==1.1.5
    PYTHONPATH=/tmp/tjd:/tmp/libmtl python benchmarks/compare_torch_libraries.py
    PYTHONPATH=/tmp/tjd:/tmp/libmtl KERAS_BACKEND=jax \
        python benchmarks/compare_torch_libraries.py --tasks 3 8
"""

import argparse
import os
import statistics
import time

from one_core import ONE_THREAD_ENV
from one_core import pin_to_one_core

pin_to_one_core()
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # For torch.
for key, value in ONE_THREAD_ENV.items():
    os.environ.setdefault(key, value)

import torch  # noqa: E402

# Keras reads its device at import; the peers' models and data follow it.
DEVICE = os.environ.setdefault(
    "KERAS_TORCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_mtl  # noqa: E402

# keras_mtl name -> TorchJD aggregator, from `torchjd.aggregation` and T.
METHODS = {
    "mean": lambda a, t: a.Mean(),
    "upgrad": lambda a, t: a.UPGrad(),
    "dualproj": lambda a, t: a.DualProj(),
    "mgda": lambda a, t: a.MGDA(),
    "pcgrad": lambda a, t: a.PCGrad(),
    "imtl_g": lambda a, t: a.IMTLG(),
    "aligned_mtl": lambda a, t: a.AlignedMTL(),
    "config": lambda a, t: a.ConFIG(),
    "graddrop": lambda a, t: a.GradDrop(),
    "gradvac": lambda a, t: a.GradVac(),
    "cagrad": lambda a, t: a.CAGrad(c=0.5),
    "nash_mtl": lambda a, t: a.NashMTL(n_tasks=t),
    "fairgrad": lambda a, t: a.FairGrad(alpha=1.0),
}

# keras_mtl name -> (LibMTL weighting class, its `weight_args`, epoch to set).
# LibMTL's GradNorm and DWA weight equally until epochs 1 and 2. "keras" is
# plain `keras.Model.fit` (not keras_mtl) against LibMTL's equal weighting.
LIBMTL = {
    "keras": ("EW", {}, 0),
    "sum": ("EW", {}, 0),
    "mgda": ("MGDA", {"mgda_gn": "none"}, 0),
    "pcgrad": ("PCGrad", {}, 0),
    "cagrad": ("CAGrad", {"calpha": 0.5, "rescale": 1}, 0),
    "gradvac": ("GradVac", {"beta": 0.5}, 0),
    "gradnorm": ("GradNorm", {"alpha": 1.5}, 1),
    "uncertainty_weighting": ("UW", {}, 0),
    "dwa": ("DWA", {"T": 2.0}, 2),
    "gls": ("GLS", {}, 0),
    "rlw": ("RLW", {"dist": "Normal"}, 0),
}


def data(tasks, batch, steps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, 64)).astype("float32")
    y = {f"task_{i}": rng.normal(size=(batch * steps, 1)).astype("float32")
         for i in range(tasks)}
    return x, y


def keras_mtl_step_time(method, tasks, batch, steps, jit_compile="auto"):
    """`method` is a registry name, or "keras" for plain `keras.Model.fit`
    of the summed losses (the Keras floor of the loss-only rules). The
    first epoch, which compiles, is not timed."""
    keras.utils.set_random_seed(0)
    x, y = data(tasks, batch, steps)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    z = keras.layers.Dense(256, activation="relu")(h)
    outputs = {
        t: keras.layers.Dense(1)(keras.layers.Dense(64, activation="relu")(z))
        for t in y
    }
    loss = {t: "mse" for t in y}
    if method == "keras":
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-3), loss=loss,
                      jit_compile=jit_compile)
    else:
        # "mean" is loss-only here (one backward pass); TorchJD still forms
        # the Jacobian for it.
        model = keras_mtl.MultiTaskModel(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-3), loss=loss,
                      aggregator=keras_mtl.aggregators.get(method),
                      jit_compile=jit_compile)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=batch, epochs=2, verbose=0, shuffle=False,
              callbacks=[Timer()])
    return statistics.median(times[steps + 1:])


def torchjd_step_time(method, tasks, batch, steps):
    import torchjd.aggregation as aggregation
    from torchjd.autojac import jac_to_grad
    from torchjd.autojac import mtl_backward

    torch.manual_seed(0)
    aggregator = METHODS[method](aggregation, tasks)
    trunk = torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
        torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU())
    heads = [torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.ReLU(),
                                 torch.nn.Linear(64, 1)) for _ in range(tasks)]
    trunk.to(DEVICE)
    for head in heads:
        head.to(DEVICE)
    params = [*trunk.parameters(), *(p for h in heads for p in h.parameters())]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x, y = data(tasks, batch, steps)
    x = torch.from_numpy(x).to(DEVICE)
    y = [torch.from_numpy(v).to(DEVICE) for v in y.values()]
    times = []
    for epoch in range(2):
        for step in range(steps):
            start = time.perf_counter()
            sl = slice(step * batch, (step + 1) * batch)
            features = trunk(x[sl])
            losses = [torch.nn.functional.mse_loss(h(features), t[sl])
                      for h, t in zip(heads, y)]
            optimizer.zero_grad()
            mtl_backward(losses, features=features)
            jac_to_grad(list(trunk.parameters()), aggregator)
            optimizer.step()
            float(sum(loss.detach() for loss in losses))
            times.append(time.perf_counter() - start)
    return statistics.median(times[steps + 1:])


def _import_libmtl():
    """LibMTL's weighting and architecture modules, without running its
    package `__init__` (which imports torchvision for its ResNet models)."""
    import importlib.util
    import sys
    import types

    if "LibMTL" not in sys.modules:
        spec = importlib.util.find_spec("LibMTL")
        if spec is None:
            raise ModuleNotFoundError("LibMTL")
        package = types.ModuleType("LibMTL")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["LibMTL"] = package
    import LibMTL.weighting as weighting
    from LibMTL.architecture.HPS import HPS

    return weighting, HPS


def libmtl_step_time(method, tasks, batch, steps):
    weighting, HPS = _import_libmtl()

    name, weight_args, epoch = LIBMTL[method]
    torch.manual_seed(0)
    task_names = [f"task_{i}" for i in range(tasks)]

    def encoder():
        return torch.nn.Sequential(
            torch.nn.Linear(64, 512), torch.nn.ReLU(),
            torch.nn.Linear(512, 512), torch.nn.ReLU(),
            torch.nn.Linear(512, 256), torch.nn.ReLU())

    decoders = torch.nn.ModuleDict({
        t: torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 1)) for t in task_names})

    class Model(HPS, getattr(weighting, name)):  # As Trainer._prepare_model.
        def __init__(self):
            super().__init__(task_names, encoder, decoders, False, False,
                             torch.device(DEVICE))
            self.init_param()

        def zero_grad_share_params(self):
            # LibMTL 1.1.5 predates torch 2's `set_to_none=True` default and
            # then fails writing into the `None` gradients.
            self.encoder.zero_grad(set_to_none=False)

    model = Model().to(DEVICE)
    model.epoch = epoch
    model.train_loss_buffer = np.ones((tasks, max(epoch, 1) + 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data(tasks, batch, steps)
    x = torch.from_numpy(x).to(DEVICE)
    y = [torch.from_numpy(v).to(DEVICE) for v in y.values()]
    times = []
    for _ in range(2):
        for step in range(steps):
            start = time.perf_counter()
            sl = slice(step * batch, (step + 1) * batch)
            preds = model(x[sl])
            losses = torch.stack([
                torch.nn.functional.mse_loss(preds[t], target[sl])
                for t, target in zip(task_names, y)])
            optimizer.zero_grad(set_to_none=False)
            model.backward(losses, **weight_args)
            optimizer.step()
            float(losses.detach().sum())
            times.append(time.perf_counter() - start)
    return statistics.median(times[steps + 1:])


def _measure(fn, method, tasks, args):
    try:
        return fn(method, tasks, args.batch_size, args.steps)
    except Exception as error:  # Missing optional solver, etc.
        return f"failed: {type(error).__name__}"


def _suffix(variant, variants):
    """A column's `jit_compile` label, where several are timed."""
    return f" jit_compile={variant}" if len(variants) > 1 else ""


def _median(values):
    """Median of the timings, or the first failure message if any failed."""
    failed = [v for v in values if not isinstance(v, float)]
    return failed[0] if failed else statistics.median(values)


PEERS = {  # name: (the methods it implements, its step timer, its title)
    "torchjd": (METHODS, torchjd_step_time, "TorchJD"),
    "libmtl": (LIBMTL, libmtl_step_time, "LibMTL"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", type=int, default=[3])
    parser.add_argument("--methods", nargs="+",
                        default=sorted(set(METHODS) | set(LIBMTL)))
    parser.add_argument("--peers", nargs="*", choices=list(PEERS),
                        default=list(PEERS),
                        help="libraries to time beside keras_mtl; with none, "
                        "keras_mtl runs alone, on any Keras backend")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating repetitions; the median is kept")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--jit-compile", nargs="+", default=["auto"],
                        choices=["auto", "True", "False"],
                        help="keras_mtl's `jit_compile`, one column each "
                        "(on PyTorch, True compiles the rule)")
    args = parser.parse_args()
    variants = [{"True": True, "False": False}.get(v, v)
                for v in args.jit_compile]
    torch.set_num_threads(1)
    peers = [PEERS[name] for name in args.peers]
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"
    print(f"Device: {name}; keras {keras.__version__} on "
          f"{keras.backend.backend()}; torch {torch.__version__}")
    ours_titles = "".join(
        f" keras_mtl{_suffix(v, variants)} (ms) |" for v in variants)
    titles = "".join(
        f" {title} (ms) |" + "".join(
            f" vs {title}{_suffix(v, variants)} |" for v in variants)
        for *_, title in peers)
    print("| T | method |" + ours_titles + titles)
    print("|---|---|" + "---|" * len(variants)
          + "---|" * (1 + len(variants)) * len(peers))
    for tasks in args.tasks:
        for method in args.methods:
            timers = [fn if method in table else None
                      for table, fn, _ in peers]
            # Rounds alternate the libraries, so that a slow spell of the
            # machine does not land on one of them only.
            rounds = [
                [keras_mtl_step_time(method, tasks, args.batch_size,
                                     args.steps, variant)
                 for variant in variants]
                + [_measure(fn, method, tasks, args) if fn else "n/a"
                   for fn in timers]
                for _ in range(args.rounds)
            ]
            medians = [_median(column) for column in zip(*rounds)]
            ours, others = medians[: len(variants)], medians[len(variants):]
            cells = [f"{1000 * t:.1f}" for t in ours]
            for theirs in others:
                if isinstance(theirs, float):
                    cells += [f"{1000 * theirs:.1f}"] + [
                        f"{t / theirs:.2f}x" for t in ours]
                else:
                    cells += [theirs] + [""] * len(ours)
            print(f"| {tasks} | {method} | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
