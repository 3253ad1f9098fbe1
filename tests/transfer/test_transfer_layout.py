"""`describe_transfer` / `restore_transfer`: adapted models through configs.

The tests marked "needs the MultiTaskModel hook" go through
`keras.saving.load_model` and pass once `MultiTaskModel.get_config` stores
`describe_transfer(self)` under "transfer" and `from_config` calls
`restore_transfer` on the rebuilt functional graph.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.src.layers.add_adapter_experts import find_adapter_experts
from tests.helpers import on_jax_only
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import keras_hub
from tests.transfer.builders import stack_inputs
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers

ROOT = pathlib.Path(__file__).resolve().parents[2]


def two_heads(backbone, cls=keras.Model):
    """Two task heads on BERT's pooled output (a stack's first token)."""
    inputs = backbone.input
    features = backbone(inputs)
    if isinstance(features, dict):
        features = features["pooled_output"]
    else:
        features = features[:, 0]
    outputs = {
        "t1": keras.layers.Dense(1, name="head_1")(features),
        "t2": keras.layers.Dense(2, name="head_2")(features),
    }
    return cls(inputs, outputs)


def randomize_transfer(model, seed=1):
    """Non-zero adapter, combiner and expert weights (most start at zero)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if not any(s in variable.path for s in ("adapter", "combiner")):
            continue
        name = variable.name
        if "kernel" in name or "bias" in name or name == "omega":
            variable.assign(
                rng.normal(scale=0.3, size=variable.shape).astype("float32")
            )


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def predictions(model, inputs):
    outputs = model(inputs)
    return {task: numpy(outputs[task]) for task in sorted(outputs)}


def round_trip(layout):
    """The layout as stored in a `.keras` file's JSON config."""
    return json.loads(json.dumps(layout))


def rebuild(model, tmp_path):
    """Config -> fresh model -> `restore_transfer` -> saved weights."""
    weights = str(tmp_path / "model.weights.h5")
    model.save_weights(weights)
    layout = round_trip(transfer.describe_transfer(model))
    rebuilt = keras.Model.from_config(model.get_config())
    transfer.restore_transfer(rebuilt, layout)
    rebuilt.load_weights(weights)
    return rebuilt


def assert_same_transfer(original, restored, inputs):
    expected = predictions(original, inputs)
    actual = predictions(restored, inputs)
    for task in expected:
        np.testing.assert_allclose(actual[task], expected[task], atol=1e-5)
    assert [v.path for v in restored.trainable_weights] == [
        v.path for v in original.trainable_weights
    ]
    assert [v.path for v in restored.weights] == [
        v.path for v in original.weights
    ]
    for a, b in zip(original.weights, restored.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    assert [v.trainable for v in restored.weights] == [
        v.trainable for v in original.weights
    ]
    # Same wrappers, units, active adapters, experts and frozen state.
    assert transfer.describe_transfer(restored) == round_trip(
        transfer.describe_transfer(original)
    )


def adapt_pfeiffer(backbone):
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    transfer.set_active_adapter(backbone, "b")


def adapt_houlsby(backbone):
    transfer.add_adapters(
        backbone, ["a", "b"], config="houlsby", reduction_factor=4
    )


def adapt_scalearn_plus_plus(backbone):
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    transfer.add_combiner(backbone, ["a", "b"], "scalearn_plus_plus")


def adapt_fusion_then_task(backbone):
    # Units in the order added: a, c, their fusion, then b.
    transfer.add_adapters(backbone, ["a", "c"], reduction_factor=4)
    transfer.add_combiner(backbone, ["a", "c"], "adapter_fusion", name="fused")
    transfer.add_adapters(backbone, ["b"], reduction_factor=4)
    transfer.set_active_adapter(backbone, "fused")


def adapt_experts_then_adapters(backbone):
    keras_mtl.layers.add_adapter_experts(
        backbone, layer_indices=[0, 1], num_experts=2
    )
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)


def adapt_adapters_then_experts(backbone):
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    transfer.add_combiner(backbone, ["a", "b"], "scalearn")
    keras_mtl.layers.add_adapter_experts(backbone, num_experts=2)


def adapt_experts_active_task(backbone):
    # Deterministic training (no router noise, no dropout on the scales).
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    keras_mtl.layers.add_adapter_experts(
        backbone, num_experts=2, router="softmax"
    )
    transfer.set_active_adapter(backbone, "b")


def adapt_active_combination(backbone):
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    transfer.add_combiner(
        backbone,
        ["a", "b"],
        "scalearn_plus_plus",
        combiner_kwargs={"dropout": 0.0},
    )


def adapt_lora(backbone):
    config = transfer.LoRAConfig(rank=2, targets=["query", "key", "value",
                                                  "output"])
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    transfer.set_active_adapter(backbone, "b")


def adapt_ia3(backbone):
    config = transfer.IA3Config(
        targets=["query", "key", "value", "intermediate", "output"])
    transfer.add_adapters(backbone, ["a", "b"], config=config)


def adapt_parallel_combined(backbone):
    config = transfer.ParallelConfig(sublayers=["attention", "feedforward"])
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    transfer.add_combiner(backbone, ["a", "b"], "scalearn")


def adapt_compacter(backbone):
    config = transfer.CompacterConfig("compacter", reduction_factor=2)
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    transfer.set_active_adapter(backbone, "b")


def adapt_prefix_half_ejected(backbone):
    config = transfer.PrefixTuningConfig(prefix_length=2, bottleneck_size=4)
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    transfer.eject_prefix(backbone, "a")
    transfer.set_active_adapter(backbone, "b")


def adapt_mam(backbone):
    config = transfer.MAMConfig(prefix_length=2, bottleneck_size=4)
    transfer.add_adapters(backbone, ["a", "b"], config=config)


def adapt_prompt_with_lora(backbone):
    union = transfer.ConfigUnion(transfer.PromptTuningConfig(2),
                                 transfer.LoRAConfig(rank=2))
    transfer.add_adapters(backbone, ["a", "b"], config=union)
    transfer.set_active_adapter(backbone, "b")


def adapt_hyper_in_two_calls(backbone):
    config = transfer.HyperConfig(reduction_factor=4, embedding_dim=4,
                                  projection_dim=8)
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    transfer.add_adapters(backbone, "c", config=config)
    transfer.set_active_adapter(backbone, transfer.Stack("c", "a"))


ADAPTATIONS = [
    adapt_hyper_in_two_calls,
    adapt_prompt_with_lora,
    adapt_prefix_half_ejected,
    adapt_mam,
    adapt_compacter,
    adapt_parallel_combined,
    adapt_lora,
    adapt_ia3,
    adapt_pfeiffer,
    adapt_houlsby,
    adapt_scalearn_plus_plus,
    adapt_fusion_then_task,
    adapt_experts_then_adapters,
    adapt_adapters_then_experts,
]


# ------------------------------------------------------------ describe


def test_describe_is_none_without_adapters():
    backbone = tiny_bert()
    assert transfer.describe_transfer(backbone) is None
    assert transfer.describe_transfer(two_heads(backbone)) is None


def test_describe_is_none_without_keras_hub(monkeypatch):
    # `import keras_hub` fails from here on; nested plain models only.
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)]
    )
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inner(inputs)))
    assert transfer.describe_transfer(model) is None


def test_describe_records_wrappers_experts_and_frozen_state():
    backbone = tiny_bert()
    adapt_adapters_then_experts(backbone)
    transfer.set_active_adapter(backbone, "a")
    model = two_heads(backbone)
    layout = transfer.describe_transfer(model)
    assert round_trip(layout) == layout  # plain JSON types
    paths = [e["path"] for e in layout["encoders"]]
    assert paths == [
        f"{backbone.name}/transformer_layer_0",
        f"{backbone.name}/transformer_layer_1",
    ]
    assert [e["index"] for e in layout["encoders"]] == [0, 1]
    first, last = layout["encoders"]
    assert first["order"] == ["_feedforward_layer_norm"]
    assert last["order"] == ["_feedforward_layer_norm", "adapter_experts"]
    assert first["adapter_experts"] is None
    assert last["adapter_experts"]["class_name"] == "MixtureOfAdapterExperts"
    wrapper = first["wrappers"]["_feedforward_layer_norm"]
    assert wrapper["units"] == [
        ["adapter", "a"],
        ["adapter", "b"],
        ["combiner", "scalearn"],
    ]
    assert wrapper["config"]["config"]["active"] == "a"
    assert sorted(wrapper["config"]["config"]["adapters"]) == ["a", "b"]
    flags = layout["trainable"]
    assert len(flags) == len(model.weights)
    trainable = sorted(k for k, flag in flags.items() if flag)
    # The active adapter, the experts added after freezing, the heads.
    assert all(
        "/a_adapter/" in k or "_adapter_experts/" in k or k.startswith("head_")
        for k in trainable
    )
    assert any("/a_adapter/" in k for k in trainable)
    assert not flags[
        f"{backbone.name}/transformer_layer_0/self_attention_layer/query/kernel"
    ]
    assert not any("/b_adapter/" in k for k in trainable)


def test_describe_records_layers_shared_between_combiners():
    backbone = tiny_bert()
    adapt_scalearn_plus_plus(backbone)
    layout = transfer.describe_transfer(backbone)
    (shared,) = layout["shared"]
    assert shared["class_name"] == "ScaLearnScales"
    assert shared["users"] == [
        [0, "_feedforward_layer_norm", "combiner", "scalearn_plus_plus"],
        [1, "_feedforward_layer_norm", "combiner", "scalearn_plus_plus"],
    ]


# ------------------------------------------------------------- restore


# On JAX (CI time): one layout of each family.
ROUND_TRIPS = on_jax_only(ADAPTATIONS, (
    adapt_hyper_in_two_calls, adapt_prompt_with_lora, adapt_mam,
    adapt_lora, adapt_scalearn_plus_plus, adapt_experts_then_adapters))


@pytest.mark.parametrize(
    "adapt", ROUND_TRIPS, ids=[a.__name__ for a in ROUND_TRIPS]
)
def test_functional_round_trip(adapt, tmp_path):
    backbone = tiny_bert()
    adapt(backbone)
    model = two_heads(backbone)
    randomize_transfer(model)
    restored = rebuild(model, tmp_path)
    assert_same_transfer(model, restored, bert_inputs())
    new_backbone = restored.get_layer(backbone.name)
    found = wrappers(new_backbone)
    assert [w.active for _, _, w in found] == [
        w.active for _, _, w in wrappers(backbone)
    ]
    assert transfer.count_transfer_parameters(
        new_backbone
    ) == transfer.count_transfer_parameters(backbone)
    # Shared layers are shared again, not copied.
    scales = {
        id(w.combiners[name].scales)
        for _, _, w in found
        for name in w.combiners
        if hasattr(w.combiners[name], "scales")
    }
    if adapt is adapt_scalearn_plus_plus:
        assert len(scales) == 1


def test_restored_model_keeps_training_like_the_original(tmp_path):
    # No dropout: Keras saves no random-generator state.
    backbone = tiny_bert(dropout=0.0)
    adapt_active_combination(backbone)
    model = two_heads(backbone)
    randomize_transfer(model)
    restored = rebuild(model, tmp_path)
    inputs = bert_inputs()
    targets = {
        "t1": np.ones((4, 1), "float32"),
        "t2": np.zeros((4, 2), "float32"),
    }
    for m in (model, restored):
        m.compile(keras.optimizers.SGD(0.1), loss="mse")
        m.train_on_batch(inputs, targets)
    assert len(restored.trainable_weights) == len(model.trainable_weights)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_allclose(numpy(a), numpy(b), atol=1e-6)


@pytest.mark.parametrize("normalize_first", [False, True])
def test_hand_built_encoder_stack_round_trip(normalize_first, tmp_path):
    stack = encoder_stack(normalize_first=normalize_first)
    transfer.add_adapters(stack, ["a", "b"], reduction_factor=4)
    keras_mtl.layers.add_adapter_experts(
        stack, layer_indices=[1], num_experts=2
    )
    model = two_heads(stack)
    randomize_transfer(model)
    restored = rebuild(model, tmp_path)
    assert_same_transfer(model, restored, stack_inputs())


def test_restore_none_is_a_no_op():
    backbone = tiny_bert()
    assert transfer.restore_transfer(backbone, None) is backbone
    assert transfer.describe_transfer(backbone) is None


def fresh_copy(model):
    return keras.Model.from_config(model.get_config())


def assert_untouched(model):
    assert transfer.describe_transfer(model) is None
    assert all(v.trainable for v in model.trainable_weights)
    assert len(model.trainable_weights) == len(model.weights)


def test_restore_rejects_other_encoders():
    backbone = tiny_bert()
    adapt_pfeiffer(backbone)
    layout = transfer.describe_transfer(two_heads(backbone))
    other = two_heads(tiny_bert(num_layers=3))
    with pytest.raises(ValueError, match="encoders"):
        transfer.restore_transfer(other, layout)
    assert_untouched(other)


def test_restore_rejects_other_variables_and_rolls_back():
    backbone = tiny_bert()
    adapt_adapters_then_experts(backbone)
    model = two_heads(backbone)
    layout = round_trip(transfer.describe_transfer(model))
    flags = layout["trainable"]
    key = next(iter(flags))
    layout["trainable"] = {"elsewhere/kernel": flags.pop(key), **flags}
    rebuilt = fresh_copy(model)
    count = len(rebuilt.weights)
    with pytest.raises(ValueError, match="variables differ"):
        transfer.restore_transfer(rebuilt, layout)
    # All or nothing: no wrapper, no expert, no new variable.
    assert_untouched(rebuilt)
    assert len(rebuilt.weights) == count
    for encoder in rebuilt.get_layer(backbone.name).transformer_layers:
        assert find_adapter_experts(encoder) is None
    # The model is usable: the right layout restores it afterwards.
    transfer.restore_transfer(rebuilt, transfer.describe_transfer(model))
    assert len(rebuilt.weights) == len(model.weights)


def test_restore_rejects_other_sub_layers():
    backbone = tiny_bert()
    adapt_pfeiffer(backbone)
    layout = round_trip(transfer.describe_transfer(backbone))
    wrapper = layout["encoders"][1]["wrappers"]["_feedforward_layer_norm"]
    wrapper["config"]["config"]["layer"]["config"]["name"] = "other_norm"
    rebuilt = keras_hub.models.BertBackbone.from_config(backbone.get_config())
    with pytest.raises(ValueError, match="other_norm"):
        transfer.restore_transfer(rebuilt, layout)
    assert_untouched(rebuilt)


def test_restore_rejects_bad_layouts_and_adapted_models():
    backbone = tiny_bert()
    adapt_pfeiffer(backbone)
    layout = transfer.describe_transfer(backbone)
    with pytest.raises(ValueError, match="describe_transfer"):
        transfer.restore_transfer(backbone, {"encoders": []})
    with pytest.raises(ValueError, match="version"):
        transfer.restore_transfer(backbone, {**layout, "version": 99})
    with pytest.raises(ValueError, match="already has adapters"):
        transfer.restore_transfer(backbone, layout)
    broken = round_trip(layout)
    wrapper = broken["encoders"][1]["wrappers"]["_feedforward_layer_norm"]
    wrapper["config"]["config"]["adapters"]["a"].update(
        class_name="NoSuchLayer", registered_name="keras_mtl>NoSuchLayer"
    )
    rebuilt = keras_hub.models.BertBackbone.from_config(backbone.get_config())
    with pytest.raises(ValueError, match="does not match"):
        transfer.restore_transfer(rebuilt, broken)
    assert_untouched(rebuilt)


def test_layout_loads_on_another_backend(tmp_path):
    other = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[
        keras.backend.backend()
    ]
    backbone = tiny_bert()
    adapt_adapters_then_experts(backbone)
    transfer.add_combiner(backbone, ["a", "b"], "scalearn_plus_plus", "pp")
    model = two_heads(backbone)
    randomize_transfer(model)
    inputs = bert_inputs()
    model.save_weights(str(tmp_path / "m.weights.h5"))
    (tmp_path / "m.json").write_text(
        json.dumps(
            {
                "config": model.get_config(),
                "layout": transfer.describe_transfer(model),
                "trainable": [v.path for v in model.trainable_weights],
            }
        )
    )
    np.savez(
        tmp_path / "io.npz",
        **inputs,
        **{f"out_{k}": v for k, v in predictions(model, inputs).items()},
    )
    script = textwrap.dedent(
        f"""
        import json
        import keras
        import numpy as np
        import keras_mtl

        saved = json.load(open({str(tmp_path / "m.json")!r}))
        model = keras.Model.from_config(saved["config"])
        keras_mtl.transfer.restore_transfer(model, saved["layout"])
        model.load_weights({str(tmp_path / "m.weights.h5")!r})
        data = np.load({str(tmp_path / "io.npz")!r})
        inputs = {{k: data[k] for k in data if not k.startswith("out_")}}
        outputs = model(inputs)
        for task in outputs:
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(outputs[task]),
                data["out_" + task], atol=1e-5)
        assert [v.path for v in model.trainable_weights] == saved["trainable"]
        assert keras_mtl.transfer.describe_transfer(model) == saved["layout"]
        print("restored on", keras.backend.backend())
        """
    )
    env = {**os.environ, "KERAS_BACKEND": other}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"restored on {other}" in result.stdout


# ------------------------------- MultiTaskModel (needs the hook wired)


@pytest.mark.parametrize(
    "adapt, aggregator",
    [
        (adapt_experts_active_task, "pcgrad"),
        (adapt_active_combination, "uncertainty_weighting"),
    ],
    ids=["experts_pcgrad", "scalearn_pp_uncertainty"],
)
def test_multi_task_model_round_trips_through_keras_file(
    adapt, aggregator, tmp_path
):
    """Needs the MultiTaskModel hook (see the module docstring)."""
    backbone = tiny_bert(dropout=0.0)
    adapt(backbone)
    model = two_heads(backbone, keras_mtl.MultiTaskModel)
    randomize_transfer(model)
    model.compile(
        "adam", loss={"t1": "mse", "t2": "mse"}, aggregator=aggregator
    )
    inputs = bert_inputs(8)
    rng = np.random.default_rng(0)
    targets = {
        "t1": rng.normal(size=(8, 1)).astype("float32"),
        "t2": rng.normal(size=(8, 2)).astype("float32"),
    }
    model.fit(inputs, targets, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, keras_mtl.MultiTaskModel)
    assert_same_transfer(model, loaded, inputs)
    assert len(loaded.trainable_weights) < len(loaded.weights) // 2
    assert [v.path for v in loaded.shared_variables] == [
        v.path for v in model.shared_variables
    ]
    new_backbone = loaded.get_layer(backbone.name)
    assert [w.active for _, _, w in wrappers(new_backbone)] == [
        w.active for _, _, w in wrappers(backbone)
    ]
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(numpy(a), numpy(b))

    # One more step matches (no dropout, no router noise: Keras saves no
    # random-generator state).
    model.fit(inputs, targets, batch_size=8, epochs=1, verbose=0)
    loaded.fit(inputs, targets, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(numpy(a), numpy(b), atol=1e-5)
