"""Tiny transformer backbones and helpers shared by the transfer tests."""

import keras
import numpy as np
import pytest

import keras_mtl

# keras-hub is an optional dependency (the `hub` extra).
keras_hub = pytest.importorskip("keras_hub")

transfer = keras_mtl.transfer

VOCAB = 50
SEQ = 6
HIDDEN = 16


def tiny_bert(seed=0, num_layers=2, hidden_dim=HIDDEN, **kwargs):
    """A 2-layer BERT with random weights; same seed, same weights."""
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=SEQ,
        **kwargs,
    )


def bert_inputs(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, SEQ), "int32")
    mask[:, -2:] = 0
    return {
        "token_ids": rng.integers(0, VOCAB, size=(batch, SEQ)).astype("int32"),
        "segment_ids": np.zeros((batch, SEQ), "int32"),
        "padding_mask": mask,
    }


def encoder_stack(
    normalize_first=False, num_layers=2, seed=0, hidden_dim=HIDDEN
):
    """A hand-built functional model made of `TransformerEncoder`s."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SEQ, hidden_dim))
    x = inputs
    for _ in range(num_layers):
        x = keras_hub.layers.TransformerEncoder(
            intermediate_dim=2 * hidden_dim,
            num_heads=2,
            normalize_first=normalize_first,
        )(x)
    return keras.Model(inputs, x)


def stack_inputs(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, SEQ, HIDDEN)).astype("float32")


def sequence_output(model, inputs):
    out = model(inputs)
    if isinstance(out, dict):
        out = out["sequence_output"]
    return keras.ops.convert_to_numpy(out)


def randomize(variables, seed=0, scale=0.3):
    """Non-zero values for (zero-initialised) adapter weights."""
    rng = np.random.default_rng(seed)
    for variable in variables:
        variable.assign(
            rng.normal(scale=scale, size=variable.shape).astype("float32")
        )


def adapter_variables(backbone, task):
    return [
        w
        for _, _, wrapper in wrappers(backbone)
        for w in wrapper.adapters[task].weights
    ]


def wrappers(backbone):
    from keras_mtl.src.transfer import backbone_walk

    return backbone_walk.wrappers(backbone)


def snapshot(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def classifier(backbone):
    """A regression head on BERT's pooled output or a stack's first token."""
    inputs = backbone.input
    features = backbone(inputs)
    if isinstance(features, dict):
        features = features["pooled_output"]
    else:
        features = features[:, 0]
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(features))


def ids(variables):
    return sorted(id(v) for v in variables)
