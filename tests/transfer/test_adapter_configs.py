"""Adapter config objects: serialisation, equality, argument errors."""

import keras
import pytest

from tests.transfer.builders import transfer

CONFIGS = [
    transfer.BottleneckConfig("houlsby", reduction_factor=8),
    transfer.LoRAConfig(rank=4, alpha=16, targets=["value", "query"]),
    transfer.IA3Config(targets=["intermediate"]),
    transfer.ParallelConfig(sublayers=["attention", "feedforward"],
                            scaling=2.0),
    transfer.CompacterConfig("compacter", phm_dim=2),
    transfer.PrefixTuningConfig(prefix_length=4, activation="relu"),
    transfer.PrefixTuningConfig(flat=True),
    transfer.PromptTuningConfig(prompt_length=3, initializer="zeros"),
    transfer.HyperConfig(reduction_factor=8, embedding_dim=16),
    transfer.MAMConfig(prefix_length=16, scaling=2.0),
    transfer.ConfigUnion(transfer.LoRAConfig(rank=2), "ia3"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_configs_round_trip_through_keras_serialisation(config):
    item = keras.saving.serialize_keras_object(config)
    again = keras.saving.deserialize_keras_object(item)
    assert again == config
    assert type(config).from_config(config.get_config()) == config
    assert repr(again) == repr(config)


def test_strings_name_the_published_defaults():
    from keras_mtl.src.transfer.adapter_configs import resolve_config

    assert resolve_config("lora") == transfer.LoRAConfig(rank=8, alpha=8)
    assert resolve_config("ia3").get_config() == {
        "targets": ["key", "value", "intermediate"]}
    assert resolve_config("parallel").get_config()["scaling"] == 4.0
    assert resolve_config("compacter++").get_config()["reduction_factor"] == 32
    assert resolve_config("pfeiffer", reduction_factor=4) == (
        transfer.BottleneckConfig("pfeiffer", reduction_factor=4))
    assert resolve_config("prefix_tuning") == transfer.PrefixTuningConfig(
        30, 512, "tanh")
    assert resolve_config("prompt_tuning").get_config()["prompt_length"] == 10
    assert resolve_config("mam") == transfer.ConfigUnion(
        transfer.PrefixTuningConfig(bottleneck_size=800),
        transfer.ParallelConfig())
    assert resolve_config("hyper") == transfer.HyperConfig(32, 64, 128)
    # Targets are kept in encoder order.
    assert CONFIGS[1].get_config()["targets"] == ["query", "value"]


@pytest.mark.parametrize("make, match", [
    (lambda: transfer.BottleneckConfig("sequential"), "`placement`"),
    (lambda: transfer.BottleneckConfig(reduction_factor=0),
     "`reduction_factor`"),
    (lambda: transfer.LoRAConfig(rank=-1), "`rank`"),
    (lambda: transfer.LoRAConfig(targets=[]), "`targets`"),
    (lambda: transfer.LoRAConfig(targets=["query", "query"]), "`targets`"),
    (lambda: transfer.IA3Config(targets=["attention"]), "`targets`"),
    (lambda: transfer.ParallelConfig(reduction_factor=-2),
     "`reduction_factor`"),
    (lambda: transfer.CompacterConfig(phm_dim=0), "`phm_dim`"),
    (lambda: transfer.PrefixTuningConfig(bottleneck_size=0),
     "`bottleneck_size`"),
    (lambda: transfer.PromptTuningConfig(prompt_length=0),
     "`prompt_length`"),
    (lambda: transfer.PromptTuningConfig(initializer="nope"),
     "`initializer`"),
    (lambda: transfer.HyperConfig(projection_dim=-1), "`projection_dim`"),
    (lambda: transfer.HyperConfig(reduction_factor=0), "`reduction_factor`"),
    (lambda: transfer.ConfigUnion("lora", transfer.LoRAConfig(rank=2)),
     "different kinds"),
    (lambda: transfer.ConfigUnion("lora", "nope"), "`config`"),
])
def test_bad_arguments_name_themselves(make, match):
    with pytest.raises(ValueError, match=match):
        make()
