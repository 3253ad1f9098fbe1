"""`average_adapter`: linear parameter averaging and LoRA SVD merging."""

import keras
import numpy as np
import pytest

from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import snapshot
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def adapted(config, tasks=("a", "b", "c")):
    backbone = tiny_bert()
    transfer.add_adapters(backbone, list(tasks), config=config)
    for seed, task in enumerate(tasks):
        randomize(adapter_variables(backbone, task), seed=seed + 1)
    return backbone


@pytest.mark.parametrize("config", ["pfeiffer", "lora", "ia3"])
@pytest.mark.parametrize("weights, normalize", [
    ([1.0, 3.0], True), ([1.0, -1.0], False), (None, True)])
def test_linear_average_of_every_tensor(config, weights, normalize):
    backbone = adapted(config)
    transfer.average_adapter(backbone, "ab", ["a", "b"], weights=weights,
                             normalize_weights=normalize)
    w = np.array([1.0, 1.0] if weights is None else weights)
    if normalize:
        w = w / w.sum()
    for _, _, wrapper in wrappers(backbone):
        for got, a, b in zip(wrapper.adapters["ab"].weights,
                             wrapper.adapters["a"].weights,
                             wrapper.adapters["b"].weights):
            np.testing.assert_allclose(
                numpy(got), w[0] * numpy(a) + w[1] * numpy(b), atol=1e-6)
    # The active adapter ("a") still trains alone.
    assert {id(v) for v in backbone.trainable_weights} == {
        id(v) for v in adapter_variables(backbone, "a")}


def lora_delta(wrapper, task):
    adapter = wrapper.adapters[task]
    return adapter.scale * numpy(adapter.lora_a) @ numpy(adapter.lora_b)


def test_lora_svd_is_exact_at_full_rank_and_optimal_below():
    config = transfer.LoRAConfig(rank=2, alpha=4)
    backbone = adapted(config)
    weights = [0.5, 1.5, -1.0]
    transfer.average_adapter(backbone, "full", ["a", "b", "c"],
                             weights=weights, normalize_weights=False,
                             combine="lora_svd", svd_rank=6)
    transfer.average_adapter(backbone, "low", ["a", "b", "c"],
                             weights=weights, normalize_weights=False,
                             combine="lora_svd", svd_rank=3)
    for _, _, wrapper in wrappers(backbone):
        want = sum(w * lora_delta(wrapper, t)
                   for w, t in zip(weights, "abc"))
        np.testing.assert_allclose(lora_delta(wrapper, "full"), want,
                                   atol=1e-5)
        # Eckart-Young: the error of the best rank-3 approximation is the
        # norm of the discarded singular values.
        singular = np.linalg.svd(want, compute_uv=False)
        error = np.linalg.norm(lora_delta(wrapper, "low") - want)
        np.testing.assert_allclose(error, np.sqrt(np.sum(singular[3:] ** 2)),
                                   rtol=1e-4, atol=1e-6)
        assert wrapper.adapters["low"].rank == 3


def test_svd_merge_runs_like_the_average_of_the_outputs():
    backbone = adapted("lora", tasks=("a", "b"))
    transfer.add_combiner(backbone, ["a", "b"], "average", name="mean")
    inputs = bert_inputs()
    mean = sequence_output(backbone, inputs)  # (delta_a + delta_b) / 2
    transfer.average_adapter(backbone, "ab", ["a", "b"], combine="lora_svd",
                             svd_rank=16)
    transfer.set_active_adapter(backbone, "ab")
    np.testing.assert_allclose(sequence_output(backbone, inputs), mean,
                               atol=1e-5)
    # Linear averaging of A and B is not the average update (it is
    # (A_a + A_b)(B_a + B_b) / 4).
    transfer.average_adapter(backbone, "lin", ["a", "b"])
    transfer.set_active_adapter(backbone, "lin")
    assert np.abs(sequence_output(backbone, inputs) - mean).max() > 1e-3


def test_errors_leave_the_backbone_unchanged():
    backbone = adapted("lora")
    before = snapshot(backbone.weights)
    names = wrappers(backbone)[0][2].names
    cases = [
        (dict(task_name="a", source_task_names=["b"]), "already has"),
        (dict(task_name="n", source_task_names=["z"]), "source_task_names"),
        (dict(task_name="n", source_task_names=["a", "b"],
              weights=[1.0, -1.0]), "sum to zero"),
        (dict(task_name="n", source_task_names=["a", "b"], weights=[1.0]),
         "`weights`"),
        (dict(task_name="n", source_task_names=["a"], combine="svd"),
         "`combine`"),
        (dict(task_name="n", source_task_names=["a"], combine="lora_svd",
              svd_rank=0), "`svd_rank`"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            transfer.average_adapter(backbone, **kwargs)
    transfer.add_adapters(backbone, "r2",
                          config=transfer.LoRAConfig(rank=2, alpha=2))
    names = wrappers(backbone)[0][2].names
    before = snapshot(backbone.weights)
    with pytest.raises(ValueError, match="one kind and size"):
        transfer.average_adapter(backbone, "n", ["a", "r2"])
    assert wrappers(backbone)[0][2].names == names
    for got, want in zip(snapshot(backbone.weights), before):
        np.testing.assert_array_equal(got, want)
    pfeiffer = adapted("pfeiffer")
    with pytest.raises(ValueError, match="LoRA adapters only"):
        transfer.average_adapter(pfeiffer, "n", ["a", "b"],
                                 combine="lora_svd")
