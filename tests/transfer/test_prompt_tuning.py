"""Prompt tuning and prompt transfer (`config="prompt_tuning"`)."""

import keras
import numpy as np
import pytest

from keras_mtl import layers
from keras_mtl.src.transfer import backbone_walk
from tests.transfer.builders import VOCAB
from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import keras_hub
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import stack_inputs
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers

LENGTH = 3


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def prompt_of(backbone, task):
    return numpy(wrappers(backbone)[0][2].adapters[task].prompt)


def blocks_on_joint(backbone, first_input, prompt, mask=None, **kwargs):
    """The backbone's blocks, without adapters, run on `[P; x]` (the
    definition of prompt tuning); the input rows of the last output."""
    blocks = backbone_walk.transformer_encoders(backbone)
    batch = first_input.shape[0]
    h = np.concatenate([np.broadcast_to(prompt, (batch,) + prompt.shape),
                        first_input], axis=1).astype("float32")
    if mask is not None:
        mask = np.concatenate(
            [np.ones((batch, len(prompt)), "int32"), mask], axis=1)
        kwargs = {kwargs.pop("mask_argument"): mask, **kwargs}
    active = wrappers(backbone)[0][2].active
    transfer.set_active_adapter(backbone, None)
    for block in blocks:
        h = numpy(block(h, **kwargs))
    transfer.set_active_adapter(backbone, active)
    return h[:, len(prompt):]


def test_prompt_adapter_layer():
    prompt = layers.PromptAdapter(prompt_length=4)
    out = prompt(np.ones((2, 5, 6), "float32"))
    assert tuple(out.shape) == (2, 4, 6)
    np.testing.assert_allclose(numpy(out[1]), numpy(prompt.prompt), atol=0)
    assert np.abs(numpy(prompt.prompt)).max() <= 0.5  # U(-0.5, 0.5)
    follower = layers.PromptAdapter(prompt_length=4, start=False)
    follower.build((None, None, 6))
    assert follower.count_params() == 0
    with pytest.raises(ValueError, match="start=False"):
        follower(np.ones((2, 5, 6), "float32"))
    clone = layers.PromptAdapter.from_config(prompt.get_config())
    assert clone.get_config() == prompt.get_config()
    with pytest.raises(ValueError, match="`prompt_length`"):
        layers.PromptAdapter(prompt_length=0)
    with pytest.raises(ValueError, match="`start`"):
        layers.PromptAdapter(start=1)


def test_encoder_equals_the_blocks_run_on_prompt_and_input():
    backbone = tiny_bert(dropout=0.0)
    inputs = bert_inputs()
    embed = keras.Model(backbone.input,
                        backbone.get_layer("embeddings_dropout").output)
    before = sequence_output(backbone, inputs)
    transfer.add_adapters(backbone, ["a", "b"],
                          config=transfer.PromptTuningConfig(LENGTH))
    transfer.set_active_adapter(backbone, "b")
    got = sequence_output(backbone, inputs)
    want = blocks_on_joint(backbone, numpy(embed(inputs)),
                           prompt_of(backbone, "b"), inputs["padding_mask"],
                           mask_argument="padding_mask")
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(got - before).max() > 1e-4
    # Padded tokens still change nothing.
    other = dict(inputs, token_ids=inputs["token_ids"].copy())
    other["token_ids"][:, -2:] = (other["token_ids"][:, -2:] + 7) % VOCAB
    np.testing.assert_allclose(sequence_output(backbone, other)[:, :-2],
                               got[:, :-2], atol=1e-5)
    transfer.set_active_adapter(backbone, None)
    np.testing.assert_allclose(sequence_output(backbone, inputs), before,
                               atol=1e-6)


@pytest.mark.parametrize("normalize_first", [False, True])
def test_hand_built_stack_without_mask(normalize_first):
    model = encoder_stack(normalize_first=normalize_first)
    transfer.add_adapters(model, "a", config=transfer.PromptTuningConfig(2))
    x = stack_inputs()
    want = blocks_on_joint(model, x, prompt_of(model, "a"))
    np.testing.assert_allclose(numpy(model(x)), want, atol=2e-5)


def test_decoder_prompts_come_first_causally():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=8, dropout=0.0)
    rng = np.random.default_rng(1)
    inputs = {"token_ids": rng.integers(1, VOCAB, (2, 5)).astype("int32"),
              "padding_mask": np.array([[1] * 5, [1] * 3 + [0] * 2],
                                       "int32")}
    embed = keras.Model(backbone.input,
                        backbone.get_layer("embeddings_dropout").output)
    transfer.add_adapters(backbone, "a",
                          config=transfer.PromptTuningConfig(LENGTH))
    got = numpy(backbone(inputs))
    want = blocks_on_joint(backbone, numpy(embed(inputs)),
                           prompt_of(backbone, "a"), inputs["padding_mask"],
                           mask_argument="decoder_padding_mask")
    want = numpy(backbone.get_layer("layer_norm")(want))  # GPT-2's last
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_only_the_first_block_holds_the_prompt_and_it_trains():
    backbone = tiny_bert(dropout=0.0)
    transfer.add_adapters(backbone, ["a", "b"],
                          config=transfer.PromptTuningConfig(LENGTH))
    starts = [w.adapters["a"].start for _, _, w in wrappers(backbone)]
    assert starts == [True, False]
    assert transfer.count_transfer_parameters(backbone) == LENGTH * 16
    transfer.set_active_adapter(backbone, "b")
    features = backbone(backbone.input)["pooled_output"]
    model = keras.Model(backbone.input, keras.layers.Dense(1)(features))
    model.compile(keras.optimizers.SGD(0.5), loss="mse")
    before = {id(v): numpy(v) for v in backbone.weights}
    model.fit(bert_inputs(), np.ones((4, 1), "float32"), epochs=2, verbose=0)
    changed = {id(v) for v in backbone.weights
               if not np.array_equal(numpy(v), before[id(v)])}
    assert changed == {id(v) for v in adapter_variables(backbone, "b")}


def test_prompt_transfer_from_pooled_source_tasks(tmp_path):
    """MVLPT: one prompt trained on the pooled source tasks, saved, then
    the starting point of a target task's prompt."""
    backbone = tiny_bert(dropout=0.0)
    transfer.add_adapters(backbone, "source",
                          config=transfer.PromptTuningConfig(LENGTH))
    features = backbone(backbone.input)["pooled_output"]
    heads = {"task_1": keras.layers.Dense(1, name="task_1")(features),
             "task_2": keras.layers.Dense(1, name="task_2")(features)}
    pooled = keras.Model(backbone.input, heads)
    pooled.compile(keras.optimizers.SGD(0.5), loss="mse")
    initial = prompt_of(backbone, "source")
    rng = np.random.default_rng(2)
    pooled.fit(bert_inputs(seed=3), {"task_1": rng.normal(size=(4, 1)),
                                     "task_2": rng.normal(size=(4, 1))},
               epochs=3, verbose=0)
    source = prompt_of(backbone, "source")
    assert np.abs(source - initial).max() > 1e-4
    path = tmp_path / "source.adapter.npz"
    transfer.save_adapter(backbone, "source", path)
    target = tiny_bert(dropout=0.0)
    transfer.load_adapter(target, "target", path)
    np.testing.assert_array_equal(prompt_of(target, "target"), source)
    # Or within one backbone: a copy to fine-tune on the target task.
    transfer.average_adapter(backbone, "target", ["source"])
    np.testing.assert_allclose(prompt_of(backbone, "target"), source)
    transfer.set_active_adapter(backbone, "target")
    inputs = bert_inputs()
    transfer.set_active_adapter(target, "target")
    np.testing.assert_allclose(sequence_output(target, inputs),
                               sequence_output(backbone, inputs), atol=1e-5)


def test_refusals():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config="prompt_tuning")
    weights = [id(v) for v in backbone.weights]
    with pytest.raises(ValueError, match="not combined"):
        transfer.add_combiner(backbone, ["a", "b"], "average")
    assert [id(v) for v in backbone.weights] == weights
    union = transfer.ConfigUnion("prompt_tuning", "prefix_tuning")
    fresh = tiny_bert()
    with pytest.raises(ValueError, match="both change"):
        transfer.add_adapters(fresh, "a", config=union)
    albert = keras_hub.models.AlbertBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16,
        embedding_dim=8, intermediate_dim=32, num_groups=1,
        num_inner_repetitions=1, max_sequence_length=6)
    with pytest.raises(ValueError, match="called several times"):
        transfer.add_adapters(albert, "a", config="prompt_tuning")
    # Prompt tuning with LoRA on the attention projections it wraps.
    lora = transfer.ConfigUnion("prompt_tuning", transfer.LoRAConfig(rank=2))
    both = tiny_bert()
    transfer.add_adapters(both, "a", config=lora)
    randomize([v for v in adapter_variables(both, "a")
               if "lora" in v.path], seed=4)
    assert sequence_output(both, bert_inputs()).shape == (4, 6, 16)


def test_roberta_base_parameter_count():
    """`adapters` default l = 10: l d = 7,680 for RoBERTa-base."""
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=10, num_layers=2, num_heads=12, hidden_dim=768,
        intermediate_dim=4, max_sequence_length=4)
    transfer.add_adapters(backbone, "t", config="prompt_tuning")
    assert transfer.count_transfer_parameters(backbone) == 7_680
