"""Shared builders for the tests: small models and reference gradients."""

import keras
import numpy as np

import keras_mtl

BACKEND = keras.config.backend()


def make_data(num_samples=64, num_features=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, num_features)).astype("float32")
    y = {
        "reg": rng.normal(size=(num_samples, 1)).astype("float32"),
        "cls": rng.integers(0, 3, size=(num_samples,)).astype("int32"),
        "bin": rng.integers(0, 2, size=(num_samples, 1)).astype("float32"),
    }
    return x, y


LOSSES = {
    "reg": "mse",
    "cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "bin": keras.losses.BinaryCrossentropy(from_logits=True),
}


def functional_parts(num_features=6, seed=0, tasks=("reg", "cls", "bin")):
    """Inputs and a dict of task outputs over a shared two-layer trunk."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_features,), name="x")
    h = keras.layers.Dense(8, activation="tanh", name="trunk_1")(inputs)
    z = keras.layers.Dense(8, activation="tanh", name="features")(h)
    units = {"reg": 1, "cls": 3, "bin": 1}
    outputs = {
        t: keras.layers.Dense(units[t], name=f"head_{t}")(z) for t in tasks
    }
    return inputs, outputs


def mtl_model(seed=0, tasks=("reg", "cls", "bin"), **kwargs):
    inputs, outputs = functional_parts(seed=seed, tasks=tasks)
    return keras_mtl.MultiTaskModel(inputs, outputs, **kwargs)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def per_task_gradients(model, x, y, tasks):
    """Each task's gradient of every trainable variable, by plain Keras.

    For each task a plain single-output Keras model sharing the layers takes
    one SGD step with learning rate 1 (so the change is minus the gradient)
    from the same starting weights. Returns {task: {path: gradient}}.
    """
    start = [to_numpy(v) for v in model.trainable_variables]
    grads = {}
    for task in tasks:
        single = keras.Model(model.input, model.output[task])
        single.compile(
            optimizer=keras.optimizers.SGD(1.0),
            loss=LOSSES[task],
            jit_compile=False,
        )
        single.train_on_batch(x, y[task])
        grads[task] = {
            v.path: s - to_numpy(v)
            for v, s in zip(model.trainable_variables, start)
        }
        for v, s in zip(model.trainable_variables, start):
            v.assign(s)
    return grads


DEGENERATE_CASES = ("zeros", "identical", "opposite", "scales", "one_task",
                    "twenty_tasks", "one_zero_row")


def degenerate_jacobian(case):
    """Hard Jacobians for the aggregators; returns (jacobian, g) with `g` the
    (1, 5) base row the first cases are built from."""
    rng = np.random.default_rng(1)
    g = rng.normal(size=(1, 5))
    jacobian = {
        "zeros": np.zeros((3, 5)),
        "identical": np.repeat(g, 3, axis=0),
        "opposite": np.concatenate([g, -g]),
        "scales": np.concatenate([1e-6 * g, 1e6 * rng.normal(size=(1, 5))]),
        "one_task": g,
        "twenty_tasks": rng.normal(size=(20, 7)),
        "one_zero_row": np.concatenate([g, np.zeros((1, 5)), 2 * g]),
    }[case]
    return jacobian.astype("float32"), g


# On JAX, where every rule's training step is a compilation, the tests that
# fit a model once per rule run this subset: each family of rules (loss
# weighting, Gramian solvers, projections, stateful, random, cross-batch,
# bilevel) and each solver kind; PyTorch and TensorFlow run every rule (CI
# time).
JAX_RULES = ("sum", "mgda", "pcgrad", "cagrad", "nash_mtl", "upgrad",
             "imtl_g", "aligned_mtl", "famo", "dwa", "uncertainty_weighting",
             "gradnorm", "modo", "auto_lambda", "forum", "pcd")


def on_jax_only(cases, kept):
    """`cases`, cut to `kept` on JAX (whose compiles make CI's longest
    run): the other backends run them all."""
    return [c for c in cases if c in kept] if BACKEND == "jax" else list(
        cases)


def rules_for_backend(names, cut_on=("jax",)):
    """`names`, cut to `JAX_RULES` on the backends `cut_on` (JAX by
    default)."""
    names = sorted(names)
    if BACKEND in cut_on:
        return [n for n in names if n in JAX_RULES]
    return names


# Eager checks of a rule's `keras.ops` maths (the same code on every
# backend): PyTorch runs every rule, JAX and TensorFlow the subset (CI time).
EAGER_CUT = ("jax", "tensorflow")
