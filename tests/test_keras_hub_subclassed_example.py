"""The keras-hub subclassed example runs on a small budget: a random-weight
BERT backbone with two heads, trained through `MultiTaskTrainer.fit`."""

import keras
import numpy as np
import pytest

from tests.test_examples import load
from tests.test_examples import not_on_jax

pytest.importorskip("keras_hub")


@not_on_jax
def test_keras_hub_subclassed_example_finds_the_backbone_and_learns(capsys):
    runs = load("keras_hub_subclassed").main(
        ["--steps", "16", "--epochs", "3", "--num-test", "64",
         "--aggregators", "sum", "upgrad"])
    out = capsys.readouterr().out
    assert "39 shared variables found" in out
    assert "topic acc" in out and "sentiment acc" in out
    assert list(runs) == ["sum", "upgrad"]
    for aggregator, run in runs.items():
        model = run["model"]
        # The shared variables are exactly the backbone's trainable weights.
        shared = [v.path for v in model.shared_variables]
        assert shared == [v.path for v in model.backbone.trainable_weights]
        # Each head belongs to its own task only.
        specific = model.task_specific_variables
        for task, head in model.heads.items():
            assert [v.path for v in specific[task]] == [
                v.path for v in head.trainable_weights]
            assert len(specific[task]) == 2
        for task in ("topic", "sentiment"):
            assert 0.0 <= run["results"][f"{task}_accuracy"] <= 1.0
        losses = run["history"]["loss"]
        assert len(losses) == 3
        assert all(loss == loss for loss in losses), (aggregator, losses)
    # The data are easy: the plain sum of the losses falls epoch after epoch.
    losses = runs["sum"]["history"]["loss"]
    assert losses[2] < losses[1] < losses[0], losses
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("aggregator", ["mgda", "pcgrad"])
def test_features_mode_splits_inside_the_keras_hub_backbone(aggregator):
    """`features` names a layer inside the backbone (BERT's pooler): the
    split works without a functional graph of the outer model."""
    import keras
    import numpy as np

    example = load("keras_hub_subclassed")
    x, y = example.make_data(64)
    model = example.build_model(seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={task: keras.losses.SparseCategoricalCrossentropy(
            from_logits=True) for task in example.TASKS},
        aggregator=aggregator, gradient_mode="features",
        features="pooled_dense",
    )
    model(x)
    before = {v.path: keras.ops.convert_to_numpy(v).copy()
              for v in model.trainable_weights}
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = {v.path for v in model.trainable_weights
               if not np.array_equal(keras.ops.convert_to_numpy(v),
                                     before[v.path])}
    # The trunk below the pooler (embeddings included) and both heads train.
    assert any("embedding" in p for p in changed), sorted(changed)
    for head in model.heads.values():
        assert {v.path for v in head.trainable_weights} <= changed


@not_on_jax
def test_keras_hub_subclassed_example_in_gramian_mode(capsys):
    """The Gramian of a real backbone's task gradients (attention, layer
    normalisation, embeddings, dropout) gives parameter mode's training."""
    argv = ["--steps", "4", "--epochs", "1", "--num-test", "32",
            "--aggregators", "upgrad"]
    parameters = load("keras_hub_subclassed").main(argv)
    gramian = load("keras_hub_subclassed").main(
        argv + ["--gradient-mode", "gramian"])
    a, b = parameters["upgrad"]["model"], gramian["upgrad"]["model"]
    assert b.balancer.gradient_mode == "gramian"
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(vb), keras.ops.convert_to_numpy(va),
            rtol=1e-3, atol=1e-5, err_msg=va.path)
