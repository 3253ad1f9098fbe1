"""Every registered aggregator on degenerate and non-finite inputs.

Degenerate but finite inputs must give finite results; non-finite inputs
must never raise (NaN is fine: the model skips such steps).
"""

import keras
import numpy as np
import pytest

from keras_mtl import aggregators
from keras_mtl.src import backend
from tests.helpers import BACKEND
from tests.helpers import EAGER_CUT
from tests.helpers import rules_for_backend
from tests.helpers import to_numpy

NAMES = sorted(aggregators.ALL_AGGREGATORS)
# Settings with code paths of their own, besides the registered defaults.
VARIANTS = {
    "mgda_l2": lambda: aggregators.MGDA("l2"),
    "mgda_loss": lambda: aggregators.MGDA("loss"),
    "mgda_loss+": lambda: aggregators.MGDA("loss+"),
    "aligned_mtl_median": lambda: aggregators.AlignedMTL("median"),
    "aligned_mtl_rmse": lambda: aggregators.AlignedMTL("rmse"),
    "pcgrad_in_order": lambda: aggregators.PCGrad(shuffle=False),
    "gradnorm_first_step": lambda: aggregators.GradNorm(
        initial_loss="first_step"),
    "stch_one_warmup_epoch": lambda: aggregators.STCH(warmup_epochs=1),
    "dwa_one_step_window": lambda: aggregators.DynamicWeightAverage(
        iteration_window=1),
    "nash_mtl_unclipped": lambda: aggregators.NashMTL(max_norm=None),
}


def build(name, num_tasks):
    if name in ("krum", "trimmed_mean") and num_tasks < 3:
        pytest.skip("needs 3 tasks (test_new_rules.py checks the error)")
    if name == "constant":
        return aggregators.Constant([1.0 + 0.5 * i for i in range(num_tasks)])
    if name in VARIANTS:
        return VARIANTS[name]()
    return aggregators.get(name)


def _rows(num_rows=3, width=6, seed=7):
    return np.random.default_rng(seed).normal(size=(num_rows, width))


def degenerate_jacobian(case):
    g, h, k = _rows()
    jacobian = {
        "one_task": g[None],
        "all_zero": np.zeros((3, 6)),
        "one_zero_row": np.stack([g, np.zeros(6), 2.0 * h]),
        "no_shared_params": np.zeros((3, 0)),
        "duplicated_rows": np.stack([g, h, g]),
        # Row norms 1e8 apart.
        "ill_conditioned": np.stack([1e-4 * g, 1e4 * h, k]),
    }[case]
    return jacobian.astype("float32")


CASES = ("one_task", "all_zero", "one_zero_row", "no_shared_params",
         "duplicated_rows", "ill_conditioned")


def make_losses(kind, num_tasks):
    if kind == "zero":
        return np.zeros(num_tasks, "float32")
    return np.linspace(0.5, 1.5, num_tasks).astype("float32")


def in_parts(agg, jacobian):
    """`jacobian` as a rule reading several batches gets it: the same
    gradients in every part (part-major rows)."""
    return np.tile(jacobian, (agg.batch_splits, 1))


def run_two_steps(agg, jacobian, losses, start):
    """Two steps from `start` (None or the initial state); the second one
    after every warm-up. Returns every output tensor."""
    num_tasks, num_params = jacobian.shape
    jacobian = in_parts(agg, jacobian)
    state = start
    outputs = []
    for step in range(2):
        if agg.uses_epoch and state is not None:
            state = {**state, "epoch": keras.ops.convert_to_tensor(10.0 * step)}
        direction, weights, state = agg.aggregate(
            jacobian, losses, state, seed=keras.random.SeedGenerator(5))
        assert tuple(direction.shape) == (num_params,)
        assert tuple(weights.shape) == (len(jacobian),)
        assert set(state) == set(agg.initial_state(num_tasks, num_params))
        if agg.requires_losses_after_step:
            state = agg.update_after_step(losses, 0.5 * losses, state)
        outputs += [direction, weights, *state.values()]
    return [to_numpy(x) for x in outputs]


# Rules whose directions never depend on the losses (checked below): zero
# losses are no harder for them than positive ones.
LOSS_FREE = {"aligned_mtl", "cagrad", "config", "cr_mogm", "dualproj",
             "fairgrad", "graddrop", "gradvac", "imtl_g", "krum", "mgda",
             "modo", "nash_mtl", "pcd", "pcgrad", "sdmgrad", "trimmed_mean",
             "upgrad"}


@pytest.mark.skipif(BACKEND != "torch",
                    reason="A property of the rules' maths (the same "
                    "keras.ops code on every backend); PyTorch runs it "
                    "fastest.")
@pytest.mark.parametrize("name", sorted(LOSS_FREE))
def test_loss_free_rules_ignore_the_losses(name):
    jacobian = degenerate_jacobian("ill_conditioned")
    agg = build(name, 3)
    runs = [run_two_steps(agg, jacobian, make_losses(kind, 3),
                          agg.initial_state(3, 6))
            for kind in ("positive", "zero")]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("losses_kind", ["positive", "zero"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "name", rules_for_backend(NAMES, EAGER_CUT) + sorted(VARIANTS))
def test_degenerate_inputs_give_finite_results(name, case, losses_kind):
    if losses_kind == "zero" and name in LOSS_FREE:
        pytest.skip("the rule ignores the losses (see above)")
    jacobian = degenerate_jacobian(case)
    num_tasks, num_params = jacobian.shape
    losses = make_losses(losses_kind, num_tasks)
    agg = build(name, num_tasks)
    start = agg.initial_state(num_tasks, num_params)
    outputs = run_two_steps(agg, jacobian, losses, start)
    for x in outputs:
        assert np.all(np.isfinite(x)), (name, case, x)
    if case == "all_zero":
        np.testing.assert_allclose(outputs[0], 0.0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_no_state_and_no_shared_parameters(name):
    jacobian = degenerate_jacobian("no_shared_params")
    losses = make_losses("positive", 3)
    outputs = run_two_steps(build(name, 3), jacobian, losses, start=None)
    assert all(np.all(np.isfinite(x)) for x in outputs)


@pytest.mark.parametrize("case", ["duplicated_rows", "ill_conditioned",
                                  "all_zero"])
@pytest.mark.parametrize("name", NAMES)
def test_compiled_degenerate_inputs_give_finite_results(name, case):
    if BACKEND == "torch":
        pytest.skip("CI time: Inductor compiles each rule in seconds; "
                    "test_contract.py compiles every rule on PyTorch")
    jacobian = degenerate_jacobian(case)
    losses = make_losses("positive", len(jacobian))
    agg = build(name, len(jacobian))

    def run(jac, loss_values):
        direction, weights, _ = agg.aggregate(jac, loss_values, seed=3)
        return direction, weights

    for x in backend.jit(run)(in_parts(agg, jacobian), losses):
        assert np.all(np.isfinite(to_numpy(x))), (name, case)


def non_finite_inputs(kind):
    jacobian = _rows().astype("float32")
    losses = make_losses("positive", 3)
    bad = {"inf": np.inf, "nan": np.nan}[kind.split("_")[0]]
    if kind.endswith("gradient"):
        jacobian[1, 2] = bad
    else:
        losses[1] = bad
    return jacobian, losses


NON_FINITE = ("inf_gradient", "nan_gradient", "inf_loss", "nan_loss")


@pytest.mark.parametrize("kind", NON_FINITE)
@pytest.mark.parametrize("name", rules_for_backend(NAMES, EAGER_CUT))
def test_non_finite_inputs_never_raise(name, kind):
    jacobian, losses = non_finite_inputs(kind)
    agg = build(name, 3)
    jacobian = in_parts(agg, jacobian)
    direction, weights, state = agg.aggregate(jacobian, losses)
    agg.aggregate(jacobian, losses, state)
    assert tuple(direction.shape) == (6,)
    assert tuple(weights.shape) == (len(jacobian),)
    if agg.requires_losses_after_step:
        agg.update_after_step(losses, losses, state)


def graph_functions(fn):
    """`fn` eagerly and, on TensorFlow, as a graph and compiled by XLA:
    TensorFlow's eager and graph `solve`/`eigh` raise on non-finite input."""
    functions = [fn]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        functions += [tf.function(fn, jit_compile=False),
                      tf.function(fn, jit_compile=True)]
    elif BACKEND == "jax":
        functions.append(backend.jit(fn))
    return functions


@pytest.mark.parametrize("kind", ["inf_gradient", "nan_gradient"])
@pytest.mark.parametrize(
    "name", ["nash_mtl", "fairgrad", "mgda", "imtl_g", "config",
             "aligned_mtl", "upgrad", "cagrad"])
def test_gramian_solvers_never_raise_on_non_finite_gradients(name, kind):
    jacobian, losses = non_finite_inputs(kind)
    agg = build(name, 3)

    def run(j):
        return agg.aggregate(j, losses)[1]

    for fn in graph_functions(run):
        fn(jacobian)


def test_nash_mtl_with_an_inf_gradient_does_not_raise():
    jacobian = np.array([[np.inf, 1.0, 2.0], [0.5, 1.0, -1.0]], "float32")
    agg = aggregators.NashMTL()
    for fn in graph_functions(lambda j: agg.aggregate(j)[1]):
        weights = to_numpy(fn(jacobian))
        assert weights.shape == (2,)
