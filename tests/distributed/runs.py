"""The training runs the data-parallel tests compare.

Each backend's test trains the same small multi-task problem on one device
and on N replicas (devices or processes), with the global batch split over
the replicas, and checks that both end with the same weights, aggregator
state and logs. The labels are masked unevenly: the replica holding the
second half of each global batch has no `reg` label at all and other sample
weights for `bin`, so a per-replica mean would train another model.
"""

import contextlib

import keras
import numpy as np

import keras_mtl
from tests.helpers import LOSSES
from tests.helpers import make_data

GLOBAL_BATCH = 16
EPOCHS = 2

CASES = (
    ("sum", "parameters"),
    ("mgda", "parameters"),
    ("mgda", "features"),
    ("pcgrad", "parameters"),
    ("nash_mtl", "parameters"),
    ("famo", "parameters"),
    ("uncertainty_weighting", "parameters"),
    ("modo", "parameters"),
    ("auto_lambda", "parameters"),
    ("forum", "parameters"),
    ("mgda", "sharpness"),
)

# Rules that split each batch into parts: every replica's batch of 8 splits
# into the same parts as one device's (given batches of the full size).
SPLIT_RULES = ("modo", "auto_lambda", "forum")

# Rules built with other arguments than their defaults: MoDo on two parts;
# Auto-Lambda and FORUM with a visible learning rate for their weights.
VARIANTS = {
    "modo": lambda: keras_mtl.aggregators.MoDo(num_batches=2),
    "auto_lambda": lambda: keras_mtl.aggregators.AutoLambda(
        learning_rate=0.05),
    "forum": lambda: keras_mtl.aggregators.FORUM(inner_steps=2,
                                                 learning_rate=0.05),
}

# JAX's engine has no replica code of its own (the step is one SPMD program
# over the global batch): its multi-process test checks the plumbing
# (processes, sharded input, saving) on a Gramian rule in each mode (PCGrad
# with its random draws); each case is a compilation (CI time).
SPMD_CASES = (
    ("mgda", "features"),
    ("pcgrad", "parameters"),
    # Gramian mode is refused with replicas on the other backends; here
    # the program's Gramian is the global batch's.
    ("mgda", "gramian"),
)


def backend_cases(backend):
    return SPMD_CASES if backend == "jax" else CASES

# `evaluate` is compared too for these (each costs one more compiled step).
EVALUATED = (("mgda", "parameters"), ("mgda", "features"))


def problem(num_samples=64):
    """`(x, y, sample_weight)` with unevenly masked labels."""
    x, y = make_data(num_samples, seed=4)
    position = np.arange(num_samples) % GLOBAL_BATCH
    y["reg"][position >= 3] = np.nan
    rng = np.random.default_rng(7)
    weights = rng.uniform(0.0, 2.0, num_samples).astype("float32")
    weights[position % 5 == 0] = 0.0
    sample_weight = {"reg": None, "cls": None, "bin": weights}
    return x, y, sample_weight


def build(seed=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), name="x")
    h = keras.layers.Dense(
        8, activation="tanh", name="trunk_1",
        kernel_regularizer=keras.regularizers.L2(1e-2))(inputs)
    z = keras.layers.Dense(8, activation="tanh", name="features")(h)
    units = {"reg": 1, "cls": 3, "bin": 1}
    outputs = {t: keras.layers.Dense(n, name=f"head_{t}")(z)
               for t, n in units.items()}
    return keras_mtl.MultiTaskModel(inputs, outputs)


def compile_case(model, case):
    """Compiles for `(aggregator, mode)`; mode `"sharpness"` is parameter
    mode with task-based sharpness."""
    aggregator, mode = case
    aggregator = VARIANTS.get(aggregator, lambda: aggregator)()
    sharp = mode == "sharpness"
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSSES,
        aggregator=aggregator,
        gradient_mode="parameters" if sharp else mode, features="features",
        metrics={"cls": ["accuracy"]},
        sharpness="task" if sharp else None, rho=0.05,
    )


def train(case, data, scope=None, epochs=EPOCHS, batch_size=GLOBAL_BATCH,
          model=None):
    """Builds (under `scope`), compiles and fits; `data` is `(x, y, sw)`
    or a one-element tuple holding a dataset. A `ConflictMonitor` adds the
    epoch means of the gradient norms and cosines to the logs compared."""
    with scope or contextlib.nullcontext():
        if model is None:
            model = build()
            compile_case(model, case)
    if len(data) == 1:
        history = model.fit(data[0], epochs=epochs, shuffle=False,
                            verbose=0, callbacks=monitor()).history
        if case in EVALUATED:
            evaluation = model.evaluate(data[0], return_dict=True, verbose=0)
    else:
        x, y, sw = data
        history = model.fit(x, y, sample_weight=sw, batch_size=batch_size,
                            epochs=epochs, shuffle=False, verbose=0,
                            callbacks=monitor()).history
        if case in EVALUATED:
            evaluation = model.evaluate(x, y, sample_weight=sw,
                                        batch_size=batch_size,
                                        return_dict=True, verbose=0)
    if case in EVALUATED:
        history.update({f"evaluate_{k}": [v] for k, v in evaluation.items()})
    return model, history


def monitor():
    """A `ConflictMonitor`, where replicas sum its states (TensorFlow,
    PyTorch processes); JAX's step is one SPMD program (CI time)."""
    if keras.config.backend() == "jax":
        return []
    return [keras_mtl.callbacks.ConflictMonitor()]


def snapshot(model, history):
    """Weights, balancer state and last-epoch logs, as float64 arrays."""
    out = {f"weight/{v.path}": np.asarray(keras.ops.convert_to_numpy(v))
           for v in model.trainable_variables}
    for key, variable in model.balancer.named_variables().items():
        if key != "seed":
            out[f"balancer/{key}"] = np.asarray(
                keras.ops.convert_to_numpy(variable))
    for key, values in history.items():
        out[f"log/{key}"] = np.asarray(values[-1])
    return {k: v.astype("float64") for k, v in out.items()}


def differences(single, multi, rtol=1e-5, atol=1e-6):
    """The entries of two snapshots that differ beyond the tolerance.

    Solver iteration counts (`*_iterations` logs) are left out: a solver
    that stops at a tolerance may take one more or one less iteration when
    the rounding of its input changes with the reduction order.
    """
    bad = []
    for key in sorted(set(single) | set(multi)):
        if key.startswith("log/") and key.endswith("_iterations"):
            continue
        if key not in single or key not in multi:
            bad.append(f"{key}: missing")
            continue
        a, b = single[key], multi[key]
        if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol,
                                                 equal_nan=True):
            gap = np.max(np.abs(a - b)) if a.shape == b.shape else "shape"
            bad.append(f"{key}: max|diff| {gap}")
    return bad


def max_weight_gap(single, multi):
    return max(float(np.max(np.abs(single[k] - multi[k])))
               for k in single if k.startswith("weight/"))
