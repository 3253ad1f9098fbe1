"""LoRA and (IA)^3: the layers, `add_adapters` placements, files, merging."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import keras_hub
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import snapshot
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers

layers = keras_mtl.layers
ALL_LINEAR = ["query", "key", "value", "output"]
ALL = ["query", "key", "value", "intermediate", "output"]


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


# ------------------------------------------------------------- the layers


def test_lora_adapter_matches_its_formula():
    lora = layers.LoRAAdapter(rank=3, alpha=6, output_dims=(2, 5))
    x = np.random.default_rng(0).normal(size=(4, 7, 8)).astype("float32")
    assert not np.any(numpy(lora(x)))  # B starts at zero
    randomize(lora.weights, seed=1)
    a, b = numpy(lora.lora_a), numpy(lora.lora_b)
    want = (2.0 * x.astype("float64") @ a @ b).reshape(4, 7, 2, 5)
    np.testing.assert_allclose(numpy(lora(x)), want, atol=1e-5)
    np.testing.assert_allclose(numpy(lora.delta_kernel()), 2.0 * a @ b,
                               atol=1e-6)
    assert lora.count_params() == 3 * (8 + 10)
    # Kaiming-uniform(a = sqrt(5)) bound 1 / sqrt(d_in).
    fresh = layers.LoRAAdapter(rank=64)
    fresh.build((None, 100))
    assert np.abs(numpy(fresh.lora_a)).max() <= 0.1 + 1e-7
    assert np.abs(numpy(fresh.lora_a)).max() > 0.09


def test_ia3_adapter_matches_its_formula():
    ia3 = layers.IA3Adapter(num_axes=2)
    h = np.random.default_rng(0).normal(size=(3, 4, 2, 5)).astype("float32")
    np.testing.assert_allclose(numpy(ia3(h)), h, atol=0)
    randomize(ia3.weights, seed=2)
    scale = numpy(ia3.scale)
    np.testing.assert_allclose(numpy(ia3(h)), h * scale, atol=1e-6)
    delta = layers.IA3Adapter(num_axes=2, residual=False)
    delta.build(h.shape)
    delta.scale.assign(ia3.scale)
    np.testing.assert_allclose(numpy(delta(h)), h * (scale - 1), atol=1e-6)


@pytest.mark.parametrize("cls, kwargs", [
    (layers.LoRAAdapter, {"rank": 2, "alpha": 4, "output_dims": [2, 3],
                          "dropout": 0.1}),
    (layers.IA3Adapter, {"num_axes": 2, "residual": False}),
])
def test_config_round_trip_and_keras_file(cls, kwargs, tmp_path):
    layer = cls(**kwargs)
    shape = (2, 3, 6) if cls is layers.LoRAAdapter else (2, 3, 2, 3)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    layer(x)
    randomize(layer.weights, seed=3)
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(numpy(loaded.predict(x, verbose=0)),
                               numpy(model.predict(x, verbose=0)), atol=1e-6)


@pytest.mark.parametrize("kwargs, name", [
    ({"rank": 0}, "rank"),
    ({"alpha": -1.0}, "alpha"),
    ({"output_dims": "x"}, "output_dims"),
    ({"output_dims": (2, 0)}, "output_dims"),
    ({"dropout": 1.5}, "dropout"),
])
def test_lora_argument_errors(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        layers.LoRAAdapter(**kwargs)


def test_ia3_argument_errors():
    with pytest.raises(ValueError, match="`num_axes`"):
        layers.IA3Adapter(num_axes=0)
    with pytest.raises(ValueError, match="`residual`"):
        layers.IA3Adapter(residual="yes")
    with pytest.raises(ValueError, match="last 3 dimensions"):
        layers.IA3Adapter(num_axes=3).build((None, 4))


# -------------------------------------------------------- in a backbone


def reference_backbone(backbone, edit):
    """A fresh copy of `backbone`'s architecture and original weights whose
    projection kernels `edit(encoder_index, slot, kernel)` changes."""
    from keras_mtl.src.transfer import backbone_walk

    copy = tiny_bert()
    for index, slot, wrapper in wrappers(backbone):
        encoder = backbone_walk.transformer_encoders(copy)[index]
        layer = backbone_walk.sublayer(encoder, slot)
        layer.kernel.assign(edit(wrapper, numpy(layer.kernel)))
    return copy


@pytest.mark.parametrize("config", ["lora", "ia3"], ids=str)
def test_outputs_unchanged_at_initialisation_and_only_adapters_train(config):
    backbone = tiny_bert()
    inputs = bert_inputs()
    before = sequence_output(backbone, inputs)
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    np.testing.assert_allclose(sequence_output(backbone, inputs), before,
                               atol=1e-6)
    assert {id(v) for v in backbone.trainable_weights} == {
        id(v) for v in adapter_variables(backbone, "a")}
    per_layer = 2 * 8 * 32 if config == "lora" else 16 + 16 + 32
    assert transfer.count_transfer_parameters(backbone) == 2 * per_layer


def test_lora_output_equals_the_backbone_with_updated_kernels():
    backbone = tiny_bert()
    config = transfer.LoRAConfig(rank=3, alpha=6, targets=ALL_LINEAR)
    transfer.add_adapters(backbone, "a", config=config)
    randomize(adapter_variables(backbone, "a"), seed=4)

    def edit(wrapper, kernel):
        adapter = wrapper.adapters["a"]
        delta = 2.0 * numpy(adapter.lora_a) @ numpy(adapter.lora_b)
        return kernel + delta.reshape(kernel.shape)

    reference = reference_backbone(backbone, edit)
    inputs = bert_inputs()
    np.testing.assert_allclose(sequence_output(backbone, inputs),
                               sequence_output(reference, inputs), atol=1e-5)


def zero_projection_biases(backbone):
    for variable in backbone.weights:
        if variable.path.endswith(("/query/bias", "/key/bias", "/value/bias")):
            variable.assign(np.zeros(variable.shape, "float32"))
    return backbone


def test_ia3_on_projections_equals_scaled_kernel_columns():
    # With biases at zero, scaling a projection's output scales its kernel.
    backbone = zero_projection_biases(tiny_bert())
    config = transfer.IA3Config(targets=["query", "key", "value"])
    transfer.add_adapters(backbone, "a", config=config)
    randomize(adapter_variables(backbone, "a"), seed=5)
    for variable in adapter_variables(backbone, "a"):
        variable.assign(1.0 + numpy(variable))

    def edit(wrapper, kernel):
        return kernel * numpy(wrapper.adapters["a"].scale)

    reference = zero_projection_biases(reference_backbone(backbone, edit))
    inputs = bert_inputs()
    np.testing.assert_allclose(sequence_output(backbone, inputs),
                               sequence_output(reference, inputs), atol=1e-5)


MERGE_CONFIGS = [
    transfer.LoRAConfig(),
    transfer.LoRAConfig(rank=3, alpha=5, targets=ALL_LINEAR),
    transfer.IA3Config(),
    transfer.IA3Config(targets=ALL),
]


@pytest.mark.parametrize("config", MERGE_CONFIGS, ids=repr)
def test_merged_equals_unmerged(config):
    backbone = tiny_bert()
    transfer.add_adapters(backbone, "a", config=config)
    randomize(adapter_variables(backbone, "a"), seed=6)
    if isinstance(config, transfer.IA3Config):
        for variable in adapter_variables(backbone, "a"):
            variable.assign(1.0 + numpy(variable))
    inputs = bert_inputs()
    want = sequence_output(backbone, inputs)
    assert transfer.merge_adapter(backbone, "a") is backbone
    assert not wrappers(backbone)
    assert transfer.describe_transfer(backbone) is None
    np.testing.assert_allclose(sequence_output(backbone, inputs), want,
                               atol=2e-5)
    # The merged backbone saves and reloads like a plain keras-hub one.
    rebuilt = backbone.__class__.from_config(backbone.get_config())
    rebuilt.set_weights(backbone.get_weights())
    np.testing.assert_allclose(sequence_output(rebuilt, inputs), want,
                               atol=2e-5)


def test_merge_refusals_change_nothing():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config="lora")
    randomize(adapter_variables(backbone, "a"), seed=7)
    before = snapshot(backbone.weights)
    with pytest.raises(ValueError, match=r"\['b'\]"):
        transfer.merge_adapter(backbone, "a")
    with pytest.raises(ValueError, match="task_name='z'"):
        transfer.merge_adapter(backbone, "z")
    for got, want in zip(snapshot(backbone.weights), before):
        np.testing.assert_array_equal(got, want)
    assert len(wrappers(backbone)) == 4
    pfeiffer = transfer.add_adapters(tiny_bert(), "a")
    with pytest.raises(ValueError, match="BottleneckAdapter"):
        transfer.merge_adapter(pfeiffer, "a")


def test_placement_errors_change_nothing():
    backbone = tiny_bert()
    before = [v.trainable for v in backbone.weights]
    with pytest.raises(ValueError, match="applies the activation 'gelu"):
        transfer.add_adapters(
            backbone, "a",
            config=transfer.LoRAConfig(targets=["query", "intermediate"]))
    assert not wrappers(backbone)
    assert [v.trainable for v in backbone.weights] == before
    transfer.add_adapters(backbone, "a", config="lora")
    with pytest.raises(ValueError, match="same positions"):
        transfer.add_adapters(
            backbone, "b", config=transfer.LoRAConfig(targets=["query"]))
    with pytest.raises(ValueError, match="same kind"):
        transfer.add_adapters(backbone, "b", config="ia3")
    with pytest.raises(ValueError, match="reduction_factor"):
        transfer.add_adapters(backbone, "b", config="lora", reduction_factor=4)
    with pytest.raises(ValueError, match="`targets`"):
        transfer.LoRAConfig(targets=["keys"])
    with pytest.raises(ValueError, match="`config`"):
        transfer.add_adapters(backbone, "b", config="prefix")
    assert wrappers(backbone)[0][2].names == ["a"]
    # More tasks with another rank at the same positions are fine.
    transfer.add_adapters(backbone, "b",
                          config=transfer.LoRAConfig(rank=2, alpha=4))
    assert transfer.count_transfer_parameters(backbone, "b") == 2 * 2 * 2 * 32


@pytest.mark.parametrize("config", MERGE_CONFIGS[1::2], ids=repr)
def test_save_and_load_each_kind(config, tmp_path):
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    randomize(adapter_variables(backbone, "b"), seed=8)
    transfer.set_active_adapter(backbone, "b")
    inputs = bert_inputs()
    want = sequence_output(backbone, inputs)
    path = tmp_path / "b.adapter.npz"
    transfer.save_adapter(backbone, "b", path)
    fresh = tiny_bert()
    transfer.load_adapter(fresh, "t", path)
    np.testing.assert_allclose(sequence_output(fresh, inputs), want,
                               atol=1e-5)
    assert transfer.count_transfer_parameters(fresh, "t") == (
        transfer.count_transfer_parameters(backbone, "b"))
    other = transfer.add_adapters(tiny_bert(), "a", config="pfeiffer")
    before = snapshot(other.weights)
    with pytest.raises(ValueError, match="'pfeiffer' adapters"):
        transfer.load_adapter(other, "t", path)
    for got, want_value in zip(snapshot(other.weights), before):
        np.testing.assert_array_equal(got, want_value)


def test_only_the_active_lora_weights_change_in_training():
    backbone = tiny_bert(dropout=0.0)
    transfer.add_adapters(backbone, ["a", "b"], config="lora")
    transfer.set_active_adapter(backbone, "b")
    features = backbone(backbone.input)["pooled_output"]
    model = keras.Model(backbone.input, keras.layers.Dense(1)(features))
    model.compile(keras.optimizers.SGD(0.5), loss="mse")
    trained = {id(v) for v in adapter_variables(backbone, "b")}
    before = {id(v): numpy(v) for v in backbone.weights}
    model.fit(bert_inputs(), np.ones((4, 1), "float32"), epochs=2, verbose=0)
    changed = {id(v) for v in backbone.weights
               if not np.array_equal(numpy(v), before[id(v)])}
    # B receives a gradient first; A follows once B is non-zero.
    assert changed and changed <= trained


def test_roberta_base_parameter_counts():
    """`adapters` defaults on RoBERTa-base (d = 768, L = 12, d_ff = 3072):
    LoRA r = 8 on query and value, 294,912; (IA)^3, 55,296; Houlsby, twice
    Pfeiffer's 894,528 (see `../shared/reference/peft-methods.md`). LoRA and
    Houlsby do not depend on d_ff, so the feed-forward width is cut; (IA)^3
    and Houlsby count one layer, times 12."""
    lora = keras_hub.models.RobertaBackbone(
        vocabulary_size=10, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=4, max_sequence_length=4)
    transfer.add_adapters(lora, "t", config="lora")
    assert transfer.count_transfer_parameters(lora) == 294_912
    ia3 = keras_hub.models.RobertaBackbone(
        vocabulary_size=10, num_layers=1, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=4)
    transfer.add_adapters(ia3, "t", config="ia3")
    assert 12 * transfer.count_transfer_parameters(ia3) == 55_296
    houlsby = keras_hub.models.RobertaBackbone(
        vocabulary_size=10, num_layers=1, num_heads=12, hidden_dim=768,
        intermediate_dim=4, max_sequence_length=4)
    transfer.add_adapters(houlsby, "t", config="houlsby")
    assert 12 * transfer.count_transfer_parameters(houlsby) == 1_789_056


def test_lora_adapters_combine_by_output_averaging_only():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config="lora")
    randomize(adapter_variables(backbone, "a"), seed=9)
    randomize(adapter_variables(backbone, "b"), seed=10)
    with pytest.raises(ValueError, match="'lora' adapters"):
        transfer.add_combiner(backbone, ["a", "b"], "scalearn")
    transfer.add_combiner(backbone, ["a", "b"], "average", name="mean")

    def edit(wrapper, kernel):
        deltas = [numpy(wrapper.adapters[t].lora_a)
                  @ numpy(wrapper.adapters[t].lora_b) for t in ("a", "b")]
        return kernel + (0.5 * sum(deltas)).reshape(kernel.shape)

    reference = reference_backbone(backbone, edit)
    inputs = bert_inputs()
    np.testing.assert_allclose(sequence_output(backbone, inputs),
                               sequence_output(reference, inputs), atol=1e-5)
    assert transfer.count_transfer_parameters(backbone) == 0
