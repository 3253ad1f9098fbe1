import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.expert_test_utils import config_round_trip
from tests.layers.expert_test_utils import relu
from tests.layers.expert_test_utils import round_trip_outputs
from tests.layers.expert_test_utils import softmax
from tests.layers.expert_test_utils import to_numpy

MoE = keras_mtl.layers.MixtureOfExperts


def _x(shape=(2, 4, 6), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _numpy_experts(layer, tokens):
    """(N, E, u) outputs of the batched relu MLP experts, expert by expert."""
    outputs = []
    for e in range(layer.num_experts):
        h = tokens
        stack = layer.experts
        for i, (k, b) in enumerate(zip(stack.kernels, stack.biases)):
            h = h @ to_numpy(k)[e] + to_numpy(b)[e]
            if i < len(stack.kernels) - 1:
                h = relu(h)
        outputs.append(h)
    return np.stack(outputs, axis=1)


def _numpy_top_k_gates(logits, k):
    gates = np.zeros_like(logits)
    for n, row in enumerate(logits):
        top = np.argsort(-row, kind="stable")[:k]
        gates[n, top] = softmax(row[top])
    return gates


@pytest.mark.parametrize("output_activation", [None, "tanh"])
def test_dense_gating_matches_numpy(output_activation):
    # A linear last layer takes the fused path, tanh the per-expert one.
    x = _x((5, 6))
    layer = MoE(3, expert_units=(7, 4), bias_initializer="random_normal",
                output_activation=output_activation)
    got = to_numpy(layer(x))
    gates = softmax(x @ to_numpy(layer.router_kernel))
    experts = _numpy_experts(layer, x)
    if output_activation == "tanh":
        experts = np.tanh(experts)
    want = np.einsum("ne,neu->nu", gates, experts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_gating_matches_numpy_and_selects_k(k):
    x = _x()
    layer = MoE(4, expert_units=5, top_k=k)
    layer.build(x.shape)
    kernel = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    layer.router_kernel.assign(kernel)
    got = to_numpy(layer(x))
    tokens = x.reshape(-1, 6)
    gates = _numpy_top_k_gates(tokens @ kernel, k)
    want = np.einsum("ne,neu->nu", gates, _numpy_experts(layer, tokens))
    np.testing.assert_allclose(got.reshape(-1, 5), want, rtol=1e-5, atol=1e-5)
    stats = layer.routing_statistics(x)
    routed = to_numpy(stats["gates"])
    assert routed.shape == (2, 4, 4)
    np.testing.assert_array_equal((routed > 0).sum(-1), k)
    np.testing.assert_allclose(routed.sum(-1), 1.0, atol=1e-6)
    chosen = (gates > 0).mean(0) / k
    np.testing.assert_allclose(to_numpy(stats["expert_load"]), chosen)
    assert float(to_numpy(stats["dropped_fraction"])) == 0.0


def test_capacity_drops_overflow_first_choices_before_second():
    x = np.abs(_x((8, 6))) + 0.1  # positive features
    layer = MoE(4, expert_units=3, top_k=2, capacity_factor=0.5,
                load_balancing_loss_weight=0.0)
    layer.build(x.shape)
    # Every token ranks expert 0 first, expert 1 second (0 > 1 >> 2, 3).
    kernel = np.zeros((6, 4), "float32")
    kernel[:, 0], kernel[:, 1], kernel[:, 2:] = 2.0, 1.0, -5.0
    layer.router_kernel.assign(kernel)
    # capacity = ceil(0.5 * 8 * 2 / 4) = 2 tokens per expert.
    gates = to_numpy(layer.routing_statistics(x)["gates"])
    kept = gates > 0
    np.testing.assert_array_equal(kept[:, 0], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(kept[:, 1], [1, 1, 0, 0, 0, 0, 0, 0])
    assert not kept[:, 2:].any()
    # Kept weights are not renormalised; dropped tokens output zero.
    full = _numpy_top_k_gates(x @ kernel, 2)
    np.testing.assert_allclose(gates[:2], full[:2], rtol=1e-6)
    y = to_numpy(layer(x, training=True))
    np.testing.assert_array_equal(y[2:], 0.0)
    assert float(to_numpy(layer.dropped_fraction)) == pytest.approx(0.75)
    np.testing.assert_allclose(to_numpy(layer.expert_load),
                               [0.5, 0.5, 0, 0])


def test_capacity_serves_all_first_choices_before_any_second():
    # Tokens 0-1 prefer expert 1, tokens 2-3 expert 0; capacity
    # ceil(0.5 * 4 * 2 / 2) = 2. Slot-major priority keeps every first
    # choice and drops every second choice (token order would instead keep
    # both choices of tokens 0-1 and drop tokens 2-3 entirely).
    x = np.zeros((4, 6), "float32")
    x[:, 0] = [1.0, 1.0, -1.0, -1.0]
    layer = MoE(2, expert_units=3, top_k=2, capacity_factor=0.5)
    layer.build(x.shape)
    kernel = np.zeros((6, 2), "float32")
    kernel[0] = [-1.0, 1.0]
    layer.router_kernel.assign(kernel)
    gates = to_numpy(layer.routing_statistics(x)["gates"])
    np.testing.assert_array_equal(gates > 0, [[0, 1], [0, 1], [1, 0], [1, 0]])
    np.testing.assert_allclose(gates.max(-1), softmax(np.array([1.0, -1.0]))[0],
                               rtol=1e-6)


def test_auxiliary_losses_match_formulas_and_reach_model_losses():
    x = _x()
    layer = MoE(4, expert_units=3, top_k=2, load_balancing_loss_weight=0.5,
                router_z_loss_weight=0.1)
    inputs = keras.Input((4, 6))
    model = keras.Model(inputs, layer(inputs))
    model(x)
    assert model.losses == []  # auxiliary losses only in training
    model(x, training=True)
    assert len(model.losses) == 2
    logits = x.reshape(-1, 6) @ to_numpy(layer.router_kernel)
    probs = softmax(logits)
    chosen = (_numpy_top_k_gates(logits, 2) > 0).mean(0) / 2
    balance = 0.5 * 4 * np.sum(chosen * probs.mean(0))
    z = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(
        [float(to_numpy(v)) for v in model.losses],
        [balance, 0.1 * np.mean(z**2)], rtol=1e-5)


def test_auxiliary_losses_change_training():
    x, y = _x(), _x(seed=1)[..., :3]

    def train(weight):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4, 6))
        layer = MoE(4, expert_units=3, top_k=1,
                    load_balancing_loss_weight=weight)
        model = keras.Model(inputs, layer(inputs))
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(x, y, epochs=2, verbose=0)
        return to_numpy(layer.router_kernel)

    without, with_loss = train(0.0), train(10.0)
    assert np.abs(without - with_loss).max() > 1e-4


def test_noisy_router_is_random_only_in_training():
    x = _x()
    layer = MoE(4, expert_units=3, top_k=2, router="noisy_top_k", seed=1)
    a = to_numpy(layer(x, training=True))
    b = to_numpy(layer(x, training=True))
    assert np.abs(a - b).max() > 0  # softplus(0) noise scale at init
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(layer(x)))


def test_custom_expert_layer():
    x = _x((5, 6))
    layer = MoE(3, expert=keras.layers.Dense(4, activation="tanh"))
    got = to_numpy(layer(x))
    outputs = np.stack(
        [np.tanh(x @ to_numpy(e.kernel) + to_numpy(e.bias))
         for e in layer.expert_layers], axis=1)
    gates = softmax(x @ to_numpy(layer.router_kernel))
    np.testing.assert_allclose(got, np.einsum("ne,neu->nu", gates, outputs),
                               rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape((None, 7, 6)) == (None, 7, 4)
    kernels = [to_numpy(e.kernel) for e in layer.expert_layers]
    assert np.abs(kernels[0] - kernels[1]).max() > 0  # independent copies


def _numpy_capacity_mix(layer, tokens, kernel, k, capacity):
    """Switch routing, token by token: slot-major ranks, drops, outputs."""
    E = layer.num_experts
    logits = tokens @ kernel
    experts = _numpy_experts(layer, tokens)
    count = np.zeros(E, int)
    kept = np.zeros((len(tokens), k), bool)
    tops = [np.argsort(-row, kind="stable")[:k] for row in logits]
    for j in range(k):  # every first choice before any second choice
        for n, top in enumerate(tops):
            if count[top[j]] < capacity:
                count[top[j]] += 1
                kept[n, j] = True
    y = np.zeros((len(tokens), experts.shape[-1]))
    for n, top in enumerate(tops):
        weights = softmax(logits[n, top])
        for j, e in enumerate(top):
            if kept[n, j]:
                y[n] += weights[j] * experts[n, e]
    return y, kept


@pytest.mark.parametrize("k, factor", [(1, 0.5), (2, 0.75), (2, 1.0)])
def test_capacity_dispatch_matches_switch_routing(k, factor):
    x = _x((3, 8, 6), seed=1)
    layer = MoE(4, expert_units=(7, 5), top_k=k, capacity_factor=factor,
                dispatch="capacity", bias_initializer="random_normal")
    layer.build(x.shape)
    kernel = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    layer.router_kernel.assign(kernel)
    tokens = x.reshape(-1, 6)
    capacity = int(np.ceil(factor * 24 * k / 4))
    want, kept = _numpy_capacity_mix(layer, tokens, kernel, k, capacity)
    assert 0 < kept.sum() < kept.size  # some assignments are dropped
    got = to_numpy(layer(x, training=True)).reshape(-1, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(to_numpy(layer.dropped_fraction)) == pytest.approx(
        1 - kept.mean())
    # The dense dispatch of the same routing gives the same outputs.
    dense = MoE(4, expert_units=(7, 5), top_k=k, capacity_factor=factor)
    dense.build(x.shape)
    dense.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(dense(x)), got.reshape(3, 8, 5),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_custom_expert, jit_compile",
                         [(False, "auto"), (False, False), (True, "auto")])
def test_capacity_dispatch_trains_like_dense_when_nothing_is_dropped(
        use_custom_expert, jit_compile):
    # Without XLA, TensorFlow retraces the last, smaller batch with an
    # unknown batch size: the capacity is then a tensor.
    # capacity_factor = E / k gives every expert room for every token.
    expert = (dict(expert=keras.layers.Dense(3, activation="tanh"))
              if use_custom_expert else dict(expert_units=(6, 3)))
    x, y = _x((20, 6), seed=4), _x((20, 3), seed=5)
    weights, losses = [], []
    for dispatch in ("dense", "capacity"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        outputs = MoE(4, top_k=2, capacity_factor=2.0, dispatch=dispatch,
                      **expert)(inputs)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.SGD(0.1), "mse",
                      jit_compile=jit_compile)
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0,
                            shuffle=False)
        losses.append(history.history["loss"])
        weights.append(model.get_weights())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("use_custom_expert", [False, True])
def test_config_and_keras_round_trip(tmp_path, use_custom_expert):
    expert_kwargs = (
        dict(expert=keras.layers.Dense(3)) if use_custom_expert
        else dict(expert_units=[5, 3])
    )
    layer = MoE(4, top_k=2, router="noisy_top_k", capacity_factor=1.25,
                router_z_loss_weight=1e-3, seed=3, dispatch="capacity",
                **expert_kwargs)
    clone = config_round_trip(layer)
    assert (clone.top_k, clone.capacity_factor) == (2, 1.25)
    assert clone.dispatch == "capacity"
    inputs = keras.Input((4, 6))
    model = keras.Model(inputs, MoE(4, top_k=2, capacity_factor=1.0,
                                    dispatch="capacity",
                                    **expert_kwargs)(inputs))
    before, after, _ = round_trip_outputs(model, _x(), tmp_path)
    np.testing.assert_allclose(before, after, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_experts=0), "num_experts=0"),
        (dict(expert_units=None), "expert_units=None"),
        (dict(expert=keras.layers.Dense(2)), "Pass exactly one"),
        (dict(expert_units=None, expert="dense"), "expert='dense'"),
        (dict(top_k=5), "top_k=5"),
        (dict(top_k=0), "top_k=0"),
        (dict(router="switch"), "router='switch'"),
        (dict(router="noisy_top_k"), "top_k=None"),
        (dict(capacity_factor=1.0), "capacity_factor=1.0"),
        (dict(top_k=1, capacity_factor=0), "capacity_factor=0"),
        (dict(load_balancing_loss_weight=-1), "load_balancing_loss_weight=-1"),
        (dict(router_z_loss_weight="a"), "router_z_loss_weight='a'"),
        (dict(top_k=1, dispatch="sparse"), "dispatch='sparse'"),
        (dict(top_k=1, dispatch="capacity"), "capacity_factor=None"),
        (dict(dispatch="capacity"), "top_k=None"),
    ],
)
def test_invalid_arguments(kwargs, message):
    arguments = dict(num_experts=4, expert_units=3)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MoE(**arguments)
