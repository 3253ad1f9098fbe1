"""Prefix tuning and the MAM adapter (`config="prefix_tuning"`, `"mam"`)."""

import json

import keras
import numpy as np
import pytest

from keras_mtl import layers
from keras_mtl.src.transfer import backbone_walk
from tests.transfer.builders import VOCAB
from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import classifier
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import keras_hub
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import stack_inputs
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers

SMALL = transfer.PrefixTuningConfig(prefix_length=3, bottleneck_size=8)


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def generated_numpy(adapter):
    """`tanh(E W_1 + b_1) W + b` in float64, shaped `(l, heads, dim)`."""
    g = adapter.generator
    hidden = np.tanh(numpy(g.embedding) @ numpy(g.kernel) + numpy(g.bias))
    prefix = hidden @ numpy(adapter.kernel) + numpy(adapter.bias)
    return prefix.reshape((adapter.prefix_length,) + adapter.prefix_shape)


def attention_numpy(encoder, x, mask, prefix_k, prefix_v):
    """Multi-head attention over `[P_k; K]`, `[P_v; V]` in float64; the
    prefix is visible to every query."""

    def dense(slot):
        layer = backbone_walk.sublayer(encoder, slot)
        layer = getattr(layer, "layer", layer)
        return numpy(layer.kernel), numpy(layer.bias)

    (wq, bq), (wk, bk), (wv, bv) = [
        dense(s) for s in (backbone_walk.QUERY, backbone_walk.KEY,
                           backbone_walk.VALUE)]
    wo, bo = dense(f"{backbone_walk.ATTENTION}._output_dense")
    x = x.astype("float64")
    batch = x.shape[0]
    q = np.einsum("bsd,dhe->bshe", x, wq) + bq
    k = np.einsum("bsd,dhe->bshe", x, wk) + bk
    v = np.einsum("bsd,dhe->bshe", x, wv) + bv
    k = np.concatenate([np.broadcast_to(prefix_k, (batch,) + prefix_k.shape),
                        k], axis=1)
    v = np.concatenate([np.broadcast_to(prefix_v, (batch,) + prefix_v.shape),
                        v], axis=1)
    scores = np.einsum("bthe,bshe->bhts", q, k) / np.sqrt(q.shape[-1])
    visible = np.concatenate(
        [np.ones(mask.shape[:2] + (len(prefix_k),), bool), mask], axis=-1)
    scores = np.where(visible[:, None], scores, -1e30)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshe->bthe", weights, v)
    return np.einsum("bthe,hed->btd", out, wo) + bo


# ----------------------------------------------------------------- layers


def test_prefix_adapter_matches_its_formula():
    generator = layers.PrefixGenerator(prefix_length=3, bottleneck_size=5)
    adapter = layers.PrefixAdapter(generator=generator)
    keys = np.ones((2, 4, 2, 6), "float32")
    out = adapter(keys)
    assert tuple(out.shape) == (2, 3, 2, 6)
    want = generated_numpy(adapter)
    np.testing.assert_allclose(numpy(out), np.broadcast_to(want, out.shape),
                               atol=1e-5)
    # l d + (d + 1) b in the generator, (b + 1) d in the adapter (d = 12).
    assert generator.count_params() == 3 * 12 + 13 * 5
    assert adapter.count_params() - generator.count_params() == 6 * 12
    flat = layers.PrefixAdapter(prefix_length=4)
    out = flat(keys)
    np.testing.assert_allclose(
        numpy(out[1]), numpy(flat.prefix).reshape(4, 2, 6), atol=0)
    assert 0.5 < numpy(flat.prefix).std() < 1.5  # N(0, 1)


def test_generator_is_shared_through_keras_saving(tmp_path):
    generator = layers.PrefixGenerator(prefix_length=2, bottleneck_size=4)
    inputs = keras.Input((5, 2, 3))
    first = layers.PrefixAdapter(generator=generator)
    second = layers.PrefixAdapter(generator=generator)
    model = keras.Model(inputs, [first(inputs), second(inputs)])
    randomize(model.weights, seed=1)
    x = np.random.default_rng(2).normal(size=(2, 5, 2, 3)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for got, want in zip(loaded.predict(x, verbose=0),
                         model.predict(x, verbose=0)):
        np.testing.assert_allclose(numpy(got), numpy(want), atol=1e-6)
    generators = {id(layer.generator) for layer in loaded.layers
                  if isinstance(layer, layers.PrefixAdapter)}
    assert len(generators) == 1
    clone = layers.PrefixAdapter.from_config(
        layers.PrefixAdapter(prefix_length=2).get_config())
    assert clone.prefix_length == 2 and clone.flat


def test_argument_errors():
    with pytest.raises(ValueError, match="`prefix_length`"):
        layers.PrefixGenerator(prefix_length=0)
    with pytest.raises(ValueError, match="`bottleneck_size`"):
        layers.PrefixGenerator(bottleneck_size=-1)
    with pytest.raises(ValueError, match="`generator`"):
        layers.PrefixAdapter(generator="mlp")
    with pytest.raises(ValueError, match="`prefix_length`"):
        layers.PrefixAdapter(4, generator=layers.PrefixGenerator(3))
    with pytest.raises(ValueError, match=r"\(batch, seq, \.\.\.\)"):
        layers.PrefixAdapter(2).build((None, 4))
    with pytest.raises(ValueError, match="`flat`"):
        transfer.PrefixTuningConfig(flat="yes")
    with pytest.raises(ValueError, match="`prefix_length`"):
        transfer.PrefixTuningConfig(prefix_length=0)


# -------------------------------------------------------- in an encoder


@pytest.mark.parametrize("normalize_first", [False, True])
def test_attention_attends_over_the_prefixes(normalize_first):
    model = encoder_stack(normalize_first=normalize_first, num_layers=1)
    transfer.add_adapters(model, ["a", "b"], config=SMALL)
    randomize(adapter_variables(model, "a"), seed=3, scale=0.5)
    encoder = backbone_walk.transformer_encoders(model)[0]
    key, value = (backbone_walk.sublayer(encoder, s).adapters["a"]
                  for s in (backbone_walk.KEY, backbone_walk.VALUE))
    x = stack_inputs()
    rng = np.random.default_rng(4)
    mask = rng.random((4, 6, 6)) < 0.6
    mask[..., 0] = True
    attention = backbone_walk.sublayer(encoder, backbone_walk.ATTENTION)
    want = attention_numpy(encoder, x, mask, generated_numpy(key),
                           generated_numpy(value))
    got = attention(query=x, value=x, attention_mask=mask)
    np.testing.assert_allclose(numpy(got), want, atol=2e-5)
    # Without a mask every query sees every key and prefix.
    want = attention_numpy(encoder, x, np.ones((4, 6, 6), bool),
                           generated_numpy(key), generated_numpy(value))
    np.testing.assert_allclose(numpy(attention(query=x, value=x)), want,
                               atol=2e-5)
    # The other task's prefixes, and none.
    transfer.set_active_adapter(model, "b")
    key, value = (backbone_walk.sublayer(encoder, s).adapters["b"]
                  for s in (backbone_walk.KEY, backbone_walk.VALUE))
    want = attention_numpy(encoder, x, mask, generated_numpy(key),
                           generated_numpy(value))
    got = attention(query=x, value=x, attention_mask=mask)
    np.testing.assert_allclose(numpy(got), want, atol=2e-5)
    before = numpy(model(x))
    transfer.set_active_adapter(model, None)
    empty = np.zeros((0, 2, 8))
    want = attention_numpy(encoder, x, mask, empty, empty)
    got = attention(query=x, value=x, attention_mask=mask)
    np.testing.assert_allclose(numpy(got), want, atol=2e-5)
    assert np.abs(numpy(model(x)) - before).max() > 1e-3


def test_padding_stays_masked_in_a_backbone():
    backbone = tiny_bert()
    inputs = bert_inputs()
    plain = sequence_output(backbone, inputs)
    transfer.add_adapters(backbone, "a", config=SMALL)
    out = sequence_output(backbone, inputs)
    assert np.abs(out - plain).max() > 1e-3  # prefixes change the output
    # Tokens behind the padding mask still change nothing.
    other = dict(inputs, token_ids=inputs["token_ids"].copy())
    other["token_ids"][:, -2:] = (other["token_ids"][:, -2:] + 7) % VOCAB
    np.testing.assert_allclose(sequence_output(backbone, other)[:, :-2],
                               out[:, :-2], atol=1e-5)
    transfer.set_active_adapter(backbone, None)
    np.testing.assert_allclose(sequence_output(backbone, inputs), plain,
                               atol=1e-6)


def test_only_the_active_prefixes_and_their_mlp_train():
    backbone = tiny_bert(dropout=0.0)
    transfer.add_adapters(backbone, ["a", "b"], config=SMALL)
    transfer.set_active_adapter(backbone, "b")
    model = classifier(backbone)
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    trained = {id(v) for v in adapter_variables(backbone, "b")}
    assert {id(v) for v in backbone.trainable_weights} == trained
    before = {id(v): numpy(v) for v in backbone.weights}
    model.fit(bert_inputs(), np.ones((4, 1), "float32"), epochs=2, verbose=0)
    changed = {id(v) for v in backbone.weights
               if not np.array_equal(numpy(v), before[id(v)])}
    generator = wrappers(backbone)[0][2].adapters["b"].generator
    assert {id(v) for v in generator.weights} <= changed <= trained


def test_eject_keeps_the_function_and_drops_the_mlp():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config=SMALL)
    randomize(adapter_variables(backbone, "a"), seed=5)
    inputs = bert_inputs()
    want = sequence_output(backbone, inputs)
    d, b, length, depth = 16, 8, 3, 2
    per_task = length * d + (d + 1) * b + 2 * depth * (b + 1) * d
    assert transfer.count_transfer_parameters(backbone) == per_task
    transfer.eject_prefix(backbone, "a")
    np.testing.assert_allclose(sequence_output(backbone, inputs), want,
                               atol=1e-5)
    kept = 2 * length * depth * d
    assert transfer.count_transfer_parameters(backbone) == kept
    # The MLP of "a" is gone from the model, that of "b" is not.
    paths = [v.path for v in backbone.weights]
    assert not any("a_adapter_prefix_generator" in p for p in paths)
    assert any("b_adapter_prefix_generator" in p for p in paths)
    assert all(w.adapters["a"].flat and not w.adapters["b"].flat
               for _, _, w in wrappers(backbone))
    assert {id(v) for v in backbone.trainable_weights} == {
        id(v) for v in adapter_variables(backbone, "a")}
    with pytest.raises(ValueError, match="no generated prefixes"):
        transfer.eject_prefix(backbone, "a")
    with pytest.raises(ValueError, match="task_names"):
        transfer.eject_prefix(backbone, "zzz")
    transfer.eject_prefix(backbone)  # "b", the only one left
    with pytest.raises(ValueError, match="no generated prefixes"):
        transfer.eject_prefix(backbone)


@pytest.mark.parametrize("eject", [False, True])
def test_save_and_load(eject, tmp_path):
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a"], config=SMALL)
    randomize(adapter_variables(backbone, "a"), seed=6)
    if eject:
        transfer.eject_prefix(backbone)
    inputs = bert_inputs()
    want = sequence_output(backbone, inputs)
    path = tmp_path / "a.adapter.npz"
    transfer.save_adapter(backbone, "a", path)
    fresh = tiny_bert()
    transfer.load_adapter(fresh, "t", path)
    transfer.set_active_adapter(fresh, "t")
    np.testing.assert_allclose(sequence_output(fresh, inputs), want,
                               atol=1e-5)
    # The shared MLP is stored once; the other places alias it.
    with np.load(path) as data:
        meta = json.loads(str(data["__meta__"]))
        stored = {k: data[k] for k in data.files}
    assert len(stored) - 1 + len(meta["aliases"]) == sum(
        len(s) for s in meta["shapes"])
    assert bool(meta["aliases"]) != eject
    if not eject:
        broken = dict(stored)
        meta["aliases"] = {k: "position_9_weight_9" for k in meta["aliases"]}
        broken["__meta__"] = np.array(json.dumps(meta))
        np.savez(tmp_path / "broken.npz", **broken)
        with pytest.raises(ValueError, match="alias"):
            transfer.load_adapter(tiny_bert(), "t", tmp_path / "broken.npz")
    generators = {id(w.adapters["t"].generator) for _, _, w in
                  wrappers(fresh)}
    assert len(generators) == 1 and (None in [
        w.adapters["t"].generator for _, _, w in wrappers(fresh)]) == eject


def test_refusals_leave_the_backbone_unchanged():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config="mam")
    weights = [id(v) for v in backbone.weights]
    with pytest.raises(ValueError, match="concatenated, not combined"):
        transfer.add_combiner(backbone, ["a", "b"], "average")
    with pytest.raises(ValueError, match="eject_prefix"):
        transfer.average_adapter(backbone, "ab", ["a", "b"])
    with pytest.raises(ValueError, match="PrefixAdapter"):
        transfer.merge_adapter(
            transfer.add_adapters(tiny_bert(), "a", config="mam"), "a")
    with pytest.raises(ValueError, match="same kind of configuration"):
        transfer.add_adapters(backbone, "c", config="prefix_tuning")
    assert [id(v) for v in backbone.weights] == weights
    # Prefixes extend the values: LoRA cannot sit on them as well.
    union = transfer.ConfigUnion(transfer.LoRAConfig(targets=["value"]),
                                 "prefix_tuning")
    fresh = tiny_bert()
    weights = [id(v) for v in fresh.weights]
    with pytest.raises(ValueError, match="both change"):
        transfer.add_adapters(fresh, "a", config=union)
    assert [id(v) for v in fresh.weights] == weights
    mha = keras.layers.MultiHeadAttention(2, 4)
    inputs = keras.Input((6, 8))
    # A block without keras-hub's encoder layer is not walked at all.
    with pytest.raises(ValueError, match="TransformerEncoder"):
        transfer.add_adapters(keras.Model(inputs, mha(inputs, inputs)), "a",
                              config="prefix_tuning")


def test_average_of_ejected_prefixes_is_linear():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config=SMALL)
    randomize(adapter_variables(backbone, "a"), seed=7)
    randomize(adapter_variables(backbone, "b"), seed=8)
    transfer.eject_prefix(backbone)
    transfer.average_adapter(backbone, "ab", ["a", "b"], weights=[3, -1],
                             normalize_weights=False)
    for _, _, w in wrappers(backbone):
        np.testing.assert_allclose(
            numpy(w.adapters["ab"].prefix),
            3 * numpy(w.adapters["a"].prefix)
            - numpy(w.adapters["b"].prefix), atol=1e-5)


# ------------------------------------------------------------- MAM, union


def test_mam_is_prefixes_plus_a_feedforward_parallel_adapter():
    backbone = tiny_bert()
    config = transfer.MAMConfig(prefix_length=2, bottleneck_size=4,
                                reduction_factor=4, scaling=2.0)
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    slots = [(i, s) for i, s, _ in wrappers(backbone)]
    assert slots == [(i, s) for i in range(2) for s in (
        backbone_walk.KEY, backbone_walk.VALUE,
        backbone_walk.FEEDFORWARD_INPUT)]
    from keras_mtl.src.transfer.add_adapters import config_of

    assert config_of(wrappers(backbone)) == config
    assert transfer.MAMConfig.from_config(config.get_config()) == config
    # Kept after ejection: 2 l L d prefixes + L (2 d m + m + d), m = 4.
    transfer.eject_prefix(backbone)
    assert transfer.count_transfer_parameters(backbone) == (
        2 * 2 * 2 * 16 + 2 * (2 * 16 * 4 + 4 + 16))


def test_union_serialises_and_adds_every_part():
    union = transfer.ConfigUnion("parallel", transfer.LoRAConfig(rank=2),
                                 transfer.IA3Config(targets=["key"]))
    assert union.name == "ia3+lora+parallel"
    from keras_mtl.src.transfer.adapter_configs import deserialize_config
    from keras_mtl.src.transfer.adapter_configs import serialize_config

    assert deserialize_config(serialize_config(union)) == union
    backbone = tiny_bert()
    inputs = bert_inputs()
    before = sequence_output(backbone, inputs)
    transfer.add_adapters(backbone, ["a", "b"], config=union)
    np.testing.assert_allclose(sequence_output(backbone, inputs), before,
                               atol=1e-6)
    kinds = sorted({type(w.adapters["a"]).__name__
                    for _, _, w in wrappers(backbone)})
    assert kinds == ["IA3Adapter", "LoRAAdapter", "ParallelAdapter"]
    from keras_mtl.src.transfer.add_adapters import config_of

    assert config_of(wrappers(backbone), "b") == union
    with pytest.raises(ValueError, match="different kinds"):
        transfer.ConfigUnion("pfeiffer", "houlsby")
    with pytest.raises(ValueError, match="two or more"):
        transfer.ConfigUnion("lora")
    with pytest.raises(ValueError, match="two or more"):
        transfer.ConfigUnion("mam", "lora")


def test_roberta_base_parameter_counts():
    """`adapters` defaults on RoBERTa-base (d = 768, L = 12): prefix tuning
    9,872,384 in training, 552,960 kept; MAM 22,493,984 and 7,644,672 (see
    `../shared/reference/peft-methods.md`). Neither depends on d_ff."""
    for config, training, kept in (("prefix_tuning", 9_872_384, 552_960),
                                   ("mam", 22_493_984, 7_644_672)):
        backbone = keras_hub.models.RobertaBackbone(
            vocabulary_size=10, num_layers=12, num_heads=12, hidden_dim=768,
            intermediate_dim=4, max_sequence_length=4)
        transfer.add_adapters(backbone, "t", config=config)
        assert transfer.count_transfer_parameters(backbone) == training
        transfer.eject_prefix(backbone)
        assert transfer.count_transfer_parameters(backbone) == kept
