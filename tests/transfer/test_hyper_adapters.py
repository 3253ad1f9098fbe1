"""Hyperformer adapters (`config="hyper"`): one hypernetwork, all tasks."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import layers
from tests.helpers import on_jax_only
from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import keras_hub
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers

SMALL = transfer.HyperConfig(reduction_factor=4, embedding_dim=8,
                             projection_dim=16)


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def layer_norm(x):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(
        x.var(-1, keepdims=True) + 1e-5)


def generated_numpy(net, task, layer, position):
    z = np.concatenate([numpy(task.embedding),
                        numpy(net.layer_embeddings)[layer],
                        numpy(net.position_embeddings)[position]])
    hidden = np.maximum(z @ numpy(net.projector_kernel)
                        + numpy(net.projector_bias), 0.0)
    e = hidden @ numpy(net.output_kernel) + numpy(net.output_bias)
    e = layer_norm(e) * numpy(net.norm_gamma) + numpy(net.norm_beta)
    return {name: (e @ numpy(kernel) + numpy(bias)).reshape(net.shapes[name])
            for name, (kernel, bias) in net.generators.items()}


def test_hyper_adapter_matches_its_formula():
    net = layers.AdapterHypernetwork(num_layers=3, reduction_factor=4,
                                     embedding_dim=8, projection_dim=16)
    task = layers.TaskEmbedding(embedding_dim=8)
    adapter = layers.HyperAdapter(net, task, layer_index=2,
                                  position_index=1, activation="relu")
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype("float32")
    adapter(x)
    randomize(net.weights, seed=1)
    w = generated_numpy(net, task, 2, 1)
    hidden = np.maximum(x @ w["down"] + w["down_bias"], 0.0)
    want = layer_norm(hidden @ w["up"] + w["up_bias"]) * w["gamma"] + w["beta"]
    np.testing.assert_allclose(numpy(adapter(x)), want, atol=1e-4)
    d, m, e, h = 16, 4, 8, 16
    assert net.count_params() == ((e + 1) * (2 * d * m + m + 3 * d)
                                  + (3 + 2) * e + (3 * e + 1) * h
                                  + (h + 1) * e + 2 * e)
    assert adapter.count_params() == net.count_params() + e


def test_argument_errors():
    net = layers.AdapterHypernetwork(num_layers=2, embedding_dim=8)
    task = layers.TaskEmbedding(embedding_dim=8)
    with pytest.raises(ValueError, match="`layer_index`"):
        layers.HyperAdapter(net, task, layer_index=2)
    with pytest.raises(ValueError, match="`position_index`"):
        layers.HyperAdapter(net, task, position_index=-1)
    with pytest.raises(ValueError, match="size 4"):
        layers.HyperAdapter(net, layers.TaskEmbedding(embedding_dim=4))
    with pytest.raises(ValueError, match="`hypernetwork`"):
        layers.HyperAdapter("net", task)
    with pytest.raises(ValueError, match="`num_layers`"):
        layers.AdapterHypernetwork(num_layers=0)
    with pytest.raises(ValueError, match="`embedding_dim`"):
        transfer.HyperConfig(embedding_dim=0)


def test_hypernetwork_is_shared_through_keras_saving(tmp_path):
    net = layers.AdapterHypernetwork(num_layers=1, reduction_factor=4,
                                     embedding_dim=8, projection_dim=16)
    inputs = keras.Input((3, 16))
    first = layers.HyperAdapter(net, layers.TaskEmbedding(8), 0, 0)
    second = layers.HyperAdapter(net, layers.TaskEmbedding(8), 0, 1)
    model = keras.Model(inputs, second(first(inputs)))
    randomize(model.weights, seed=2)
    x = np.random.default_rng(3).normal(size=(2, 3, 16)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(numpy(loaded.predict(x, verbose=0)),
                               numpy(model.predict(x, verbose=0)), atol=1e-5)
    nets = {id(layer.hypernetwork) for layer in loaded.layers
            if isinstance(layer, layers.HyperAdapter)}
    assert len(nets) == 1


def test_one_hypernetwork_for_every_task_and_layer():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config=SMALL)
    transfer.add_adapters(backbone, "c", config=SMALL)  # later: same net
    found = wrappers(backbone)
    nets = {id(w.adapters[t].hypernetwork) for _, _, w in found
            for t in "abc"}
    tasks = {t: {id(w.adapters[t].task_embedding) for _, _, w in found}
             for t in "abc"}
    assert len(nets) == 1 and all(len(v) == 1 for v in tasks.values())
    assert [(w.adapters["c"].layer_index, w.adapters["c"].position_index)
            for _, _, w in found] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    net = found[0][2].adapters["a"].hypernetwork
    assert transfer.count_transfer_parameters(backbone, "c") == (
        net.count_params() + 8)
    with pytest.raises(ValueError, match="one hypernetwork"):
        transfer.average_adapter(backbone, "ab", ["a", "b"])


def test_tasks_train_jointly_in_a_multi_task_model(tmp_path):
    backbone = tiny_bert(dropout=0.0)
    transfer.add_adapters(backbone, ["a", "b"], config=SMALL)
    transfer.set_active_adapter(backbone, transfer.Parallel("a", "b"))
    inputs = backbone.input
    features = backbone(transfer.replicate_batch(inputs, 2))["pooled_output"]
    out_a, out_b = transfer.split_batch(features, 2)
    model = keras_mtl.MultiTaskModel(inputs, {
        "a": keras.layers.Dense(1, name="head_a")(out_a),
        "b": keras.layers.Dense(1, name="head_b")(out_b)})
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={"a": "mse", "b": "mse"})
    before = {id(v): numpy(v) for v in backbone.weights}
    rng = np.random.default_rng(4)
    model.fit(bert_inputs(), {"a": rng.normal(size=(4, 1)),
                              "b": rng.normal(size=(4, 1))},
              epochs=2, verbose=0)
    changed = {id(v) for v in backbone.weights
               if not np.array_equal(numpy(v), before[id(v)])}
    found = wrappers(backbone)
    net = found[0][2].adapters["a"].hypernetwork
    embeddings = {id(found[0][2].adapters[t].task_embedding.embedding)
                  for t in "ab"}
    assert embeddings <= changed
    assert changed <= {id(v) for v in net.weights} | embeddings
    # One task's adapter saves with the hypernetwork (stored once) and
    # loads into a backbone of its own, not beside other hyper tasks.
    transfer.set_active_adapter(backbone, "a")
    want = sequence_output(backbone, bert_inputs())
    path = tmp_path / "a.adapter.npz"
    transfer.save_adapter(backbone, "a", path)
    fresh = tiny_bert(dropout=0.0)
    transfer.load_adapter(fresh, "a", path)
    np.testing.assert_allclose(sequence_output(fresh, bert_inputs()), want,
                               atol=1e-5)
    with pytest.raises(ValueError, match="share"):
        transfer.load_adapter(backbone, "z", path)
    assert "z" not in found[0][2].adapters


def test_unchanged_at_initialisation_and_when_inactive():
    backbone = tiny_bert()
    inputs = bert_inputs()
    before = sequence_output(backbone, inputs)
    transfer.add_adapters(backbone, "a", config=SMALL)
    np.testing.assert_allclose(sequence_output(backbone, inputs), before,
                               atol=1e-6)
    # Hyperformer's own initialisation starts near zero, not at zero.
    net = layers.AdapterHypernetwork(1, reduction_factor=4, embedding_dim=8,
                                     norm_generator_initializer=None)
    adapter = layers.HyperAdapter(net, layers.TaskEmbedding(8))
    delta = numpy(adapter(np.ones((2, 3, 16), "float32")))
    assert 0 < np.abs(delta).max() < 0.5
    randomize(adapter_variables(backbone, "a"), seed=5)
    assert np.abs(sequence_output(backbone, inputs) - before).max() > 1e-3
    transfer.set_active_adapter(backbone, None)
    np.testing.assert_allclose(sequence_output(backbone, inputs), before,
                               atol=1e-6)
    with pytest.raises(ValueError, match="both change"):
        transfer.add_adapters(tiny_bert(), "a", config=transfer.ConfigUnion(
            "hyper", "houlsby"))


def test_roberta_base_parameter_count():
    """Hyperformer defaults (rf 32, e 64, projector 128) on RoBERTa-base
    (d = 768, L = 12, two positions): the generators (e + 1)(2 d m + m + 3d)
    = 2,547,480 (about 2 x 65 d m, see
    `../shared/reference/peft-methods.md`), the embeddings and projector
    33,984, plus 64 per task. d_ff does not matter."""
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=10, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=4, max_sequence_length=4)
    transfer.add_adapters(backbone, ["t", "u"], config="hyper")
    assert transfer.count_transfer_parameters(backbone, "t") == (
        2_547_480 + 33_984 + 64)


@pytest.mark.parametrize("config", on_jax_only(
    ["prefix_tuning", "prompt_tuning", "hyper"], ["prompt_tuning"]))
def test_generated_and_sequence_adapters_train_in_mixed_precision(config):
    """Prefixes, prompts and generated adapters keep float32 variables and
    run in bfloat16; their output matches the float32 model's."""
    inputs = bert_inputs()
    want = None
    try:
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            backbone = tiny_bert(dropout=0.0)
            transfer.add_adapters(backbone, "a", config=config)
            randomize(adapter_variables(backbone, "a"), seed=6, scale=0.1)
            got = sequence_output(backbone, inputs).astype("float32")
            want = got if want is None else want
            assert {v.dtype for v in adapter_variables(backbone, "a")} == {
                "float32"}
        np.testing.assert_allclose(got, want, atol=0.1)
        features = backbone(backbone.input)["pooled_output"]
        model = keras.Model(backbone.input,
                            keras.layers.Dense(1, dtype="float32")(features))
        model.compile(keras.optimizers.SGD(0.1), loss="mse")
        model.fit(inputs, np.ones((4, 1), "float32"), epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
