"""Adapters in keras-hub decoders (`TransformerDecoder`, e.g. GPT-2)."""

import keras
import numpy as np
import pytest

from keras_mtl.src.transfer import backbone_walk
from tests.helpers import on_jax_only
from tests.transfer.builders import VOCAB
from tests.transfer.builders import adapter_variables
from tests.transfer.builders import keras_hub
from tests.transfer.builders import randomize
from tests.transfer.builders import transfer

SEQ = 6
CONFIGS = {
    "pfeiffer": "pfeiffer",
    "houlsby": "houlsby",
    "lora": transfer.LoRAConfig(rank=2, targets=["query", "value", "output"]),
    "ia3": "ia3",
    "parallel": transfer.ParallelConfig(sublayers=["attention",
                                                   "feedforward"]),
    "compacter": transfer.CompacterConfig("compacter", reduction_factor=2),
    "prefix_tuning": transfer.PrefixTuningConfig(3, 8),
    "mam": transfer.MAMConfig(prefix_length=2, bottleneck_size=4),
    "prompt_tuning": transfer.PromptTuningConfig(2),
}


def tiny_gpt2(seed=0):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=SEQ, dropout=0.0)


def gpt2_inputs(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((3, SEQ), "int32")
    mask[1, -2:] = 0
    return {"token_ids": rng.integers(1, VOCAB, (3, SEQ)).astype("int32"),
            "padding_mask": mask}


def output(model, inputs):
    return np.asarray(keras.ops.convert_to_numpy(model(inputs)), "float64")


@pytest.mark.parametrize("name", on_jax_only(
    list(CONFIGS), ["houlsby", "lora", "parallel", "mam", "prompt_tuning"]))
def test_adapters_in_a_causal_decoder(name, tmp_path):
    backbone = tiny_gpt2()
    inputs = gpt2_inputs()
    before = output(backbone, inputs)
    transfer.add_adapters(backbone, ["a", "b"], config=CONFIGS[name])
    changes_at_init = name in ("prefix_tuning", "mam", "prompt_tuning")
    initial = np.abs(output(backbone, inputs) - before).max()
    assert (initial > 1e-3) if changes_at_init else (initial < 1e-4)
    randomize(adapter_variables(backbone, "a"), seed=1)
    adapted = output(backbone, inputs)
    assert np.abs(adapted - before).max() > 1e-3
    # Still causal: later tokens do not change earlier outputs.
    later = dict(inputs, token_ids=inputs["token_ids"].copy())
    later["token_ids"][:, 4:] = later["token_ids"][:, 4:] % (VOCAB - 1) + 1
    np.testing.assert_allclose(output(backbone, later)[:, :4],
                               adapted[:, :4], atol=1e-5)
    path = tmp_path / "a.adapter.npz"
    transfer.save_adapter(backbone, "a", path)
    fresh = tiny_gpt2()
    transfer.load_adapter(fresh, "a", path)
    np.testing.assert_allclose(output(fresh, inputs), adapted, atol=1e-5)
    transfer.set_active_adapter(backbone, None)
    np.testing.assert_allclose(output(backbone, inputs), before, atol=1e-6)


def cached_decoding(decoder, x):
    """Outputs of `decoder` called one position at a time with a cache."""
    batch, length, _ = x.shape
    head = decoder._self_attention_layer
    while getattr(head, "transparent", False):
        head = head.layer
    cache = np.zeros((batch, 2, length, head.num_heads, head.key_dim),
                     "float32")
    outputs = []
    for index in range(length):
        step, cache = decoder(x[:, index:index + 1],
                              self_attention_cache=cache,
                              self_attention_cache_update_index=index)
        outputs.append(keras.ops.convert_to_numpy(step))
    return np.concatenate(outputs, axis=1)


def test_cached_decoding_matches_the_full_pass():
    backbone = tiny_gpt2()
    transfer.add_adapters(backbone, "a", config=transfer.ConfigUnion(
        transfer.LoRAConfig(rank=2), "parallel"))
    randomize(adapter_variables(backbone, "a"), seed=2)
    decoder = backbone_walk.transformer_encoders(backbone)[0]
    x = np.random.default_rng(3).normal(size=(2, SEQ, 16)).astype("float32")
    full = keras.ops.convert_to_numpy(decoder(x))
    np.testing.assert_allclose(cached_decoding(decoder, x), full, atol=1e-5)
    prefixed = tiny_gpt2()
    transfer.add_adapters(prefixed, "a", config="prefix_tuning")
    decoder = backbone_walk.transformer_encoders(prefixed)[0]
    with pytest.raises(ValueError, match="cached"):
        cached_decoding(decoder, x)
    prompted = tiny_gpt2()
    transfer.add_adapters(prompted, "a", config="prompt_tuning")
    decoder = backbone_walk.transformer_encoders(prompted)[0]
    with pytest.raises(ValueError, match="cached decoding"):
        cached_decoding(decoder, x)


def test_decoder_adapters_round_trip_through_the_model_config(tmp_path):
    from tests.transfer.test_transfer_layout import assert_same_transfer
    from tests.transfer.test_transfer_layout import randomize_transfer
    from tests.transfer.test_transfer_layout import rebuild
    from tests.transfer.test_transfer_layout import two_heads

    backbone = tiny_gpt2()
    transfer.add_adapters(backbone, ["a", "b"], config=CONFIGS["mam"])
    transfer.set_active_adapter(backbone, "b")
    model = two_heads(backbone)
    randomize_transfer(model)
    restored = rebuild(model, tmp_path)
    assert_same_transfer(model, restored, gpt2_inputs())
