import keras
import numpy as np
import pytest

from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import classifier
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import ids
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import snapshot
from tests.transfer.builders import stack_inputs
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers

TASKS = ["a", "b", "c"]
# N = 3 sources, d = 16, L = 2 (ScaLearn paper, Sec. 4.3 of the reference).
EXPECTED_COUNTS = {
    "scalearn": 3 * 16 * 2,
    "scalearn_uniform": 3 * 2,
    "scalearn_plus_plus": 3 * 16,
    "scalearn_uniform_plus_plus": 3,
    "average": 0,
    # Q and K with bias, V without: 3 d^2 + 2 d per layer.
    "adapter_fusion": 2 * (3 * 16 * 16 + 2 * 16),
}


def combiner_variables(backbone, name):
    seen = {}
    for _, _, wrapper in wrappers(backbone):
        for w in wrapper.combiners[name].weights:
            seen.setdefault(id(w), w)
    return list(seen.values())


@pytest.fixture(scope="module")
def stack_with_sources():
    model = encoder_stack()
    transfer.add_adapters(model, TASKS, reduction_factor=4)
    for seed, task in enumerate(TASKS):
        randomize(adapter_variables(model, task), seed=seed)
    return model


@pytest.mark.parametrize("combiner", sorted(EXPECTED_COUNTS))
def test_trainable_weights_are_exactly_the_transfer_parameters(
    stack_with_sources, combiner
):
    model = stack_with_sources
    name = f"{combiner}_1"
    transfer.add_combiner(model, TASKS, combiner, name=name)
    assert ids(model.trainable_weights) == ids(
        combiner_variables(model, name)
    )
    assert transfer.count_transfer_parameters(model) == (
        EXPECTED_COUNTS[combiner]
    )
    assert transfer.count_transfer_parameters(model, name) == (
        EXPECTED_COUNTS[combiner]
    )
    assert all(w.active == name for _, _, w in wrappers(model))


def test_plus_plus_variants_share_one_set_of_scales(stack_with_sources):
    model = stack_with_sources
    transfer.add_combiner(model, TASKS, "scalearn_plus_plus", name="pp")
    first, second = [w.combiners["pp"] for _, _, w in wrappers(model)]
    assert first.omega is second.omega
    assert tuple(first.omega.shape) == (3, 16)
    transfer.add_combiner(model, TASKS, "scalearn_uniform_plus_plus",
                          name="upp")
    first, second = [w.combiners["upp"] for _, _, w in wrappers(model)]
    assert first.omega is second.omega and first.dropout == 0.0


def test_one_hot_scales_reproduce_the_single_adapter(stack_with_sources):
    model = stack_with_sources
    inputs = stack_inputs()
    transfer.set_active_adapter(model, "b")
    expected = sequence_output(model, inputs)
    for mode in ("scalearn", "scalearn_uniform"):
        transfer.add_combiner(model, TASKS, mode, name=f"{mode}_hot")
        for _, _, wrapper in wrappers(model):
            omega = wrapper.combiners[f"{mode}_hot"].omega
            one_hot = np.zeros(omega.shape, "float32")
            one_hot[1] = 1.0
            omega.assign(one_hot)
        np.testing.assert_allclose(sequence_output(model, inputs), expected,
                                   atol=1e-5)


def test_average_of_identical_adapters_is_that_adapter():
    model = encoder_stack()
    inputs = stack_inputs()
    transfer.add_adapters(model, TASKS, reduction_factor=4)
    randomize(adapter_variables(model, "a"))
    expected = sequence_output(model, inputs)
    for task in ("b", "c"):
        for target, source in zip(
            adapter_variables(model, task), adapter_variables(model, "a")
        ):
            target.assign(source)
    transfer.add_combiner(model, TASKS, "average")
    np.testing.assert_allclose(sequence_output(model, inputs), expected,
                               atol=1e-5)


def test_combination_leaves_outputs_unchanged_with_untrained_sources():
    backbone = tiny_bert()
    inputs = bert_inputs()
    expected = sequence_output(backbone, inputs)
    transfer.add_adapters(backbone, TASKS, reduction_factor=4)
    transfer.add_combiner(backbone, TASKS, "scalearn")
    np.testing.assert_allclose(sequence_output(backbone, inputs), expected,
                               atol=1e-6)


@pytest.mark.parametrize("combiner", ["scalearn", "adapter_fusion"])
def test_fit_trains_the_combiner_only(combiner):
    backbone = encoder_stack()
    transfer.add_adapters(backbone, TASKS, reduction_factor=4)
    for seed, task in enumerate(TASKS):
        randomize(adapter_variables(backbone, task), seed=seed)
    options = {}
    if combiner == "adapter_fusion":
        options = {"temperature": 50.0, "temperature_decay": 0.05}
    transfer.add_combiner(backbone, TASKS, combiner, combiner_kwargs=options)
    learned = [
        w for w in combiner_variables(backbone, combiner) if w.trainable
    ]
    assert ids(backbone.trainable_weights) == ids(learned)
    others = [w for w in backbone.weights if id(w) not in set(ids(learned))]
    # The annealed temperature is a non-trainable variable of the combiner.
    annealed = [w for w in others if w.path.endswith("temperature")]
    assert len(annealed) == (2 if options else 0)
    frozen = [w for w in others if id(w) not in set(ids(annealed))]
    before_learned, before_frozen = snapshot(learned), snapshot(frozen)
    model = classifier(backbone)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    inputs = stack_inputs(batch=8)
    targets = np.random.default_rng(1).normal(size=(8, 1)).astype("float32")
    model.fit(inputs, targets, batch_size=4, epochs=1, verbose=0)
    for value, before in zip(snapshot(frozen), before_frozen):
        np.testing.assert_array_equal(value, before)
    for value, before in zip(snapshot(learned), before_learned):
        assert np.abs(value - before).max() > 0
    for value in snapshot(annealed):
        np.testing.assert_allclose(value, 50.0 - 2 * 0.05, rtol=1e-6)


def test_switching_between_a_task_and_a_combination(stack_with_sources):
    model = stack_with_sources
    transfer.add_combiner(model, ["a", "c"], "scalearn", name="mix")
    transfer.set_active_adapter(model, "a")
    assert ids(model.trainable_weights) == ids(adapter_variables(model, "a"))
    transfer.set_active_adapter(model, "mix")
    assert ids(model.trainable_weights) == ids(
        combiner_variables(model, "mix")
    )
    assert transfer.count_transfer_parameters(model) == 2 * 16 * 2


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((["a", "b"], "hyperformer"), {}, "combiner='hyperformer'"),
        ((["a", "z"],), {}, r"source_task_names='z'"),
        ((["a", "a"],), {}, "duplicates"),
        (([],), {}, "non-empty list"),
        ((["a", "b"],), {"name": "a"}, "already has"),
        ((["a", "b"],), {"name": "x/y"}, "without '/'"),
        ((["a", "b"],), {"combiner_kwargs": 0.3}, "combiner_kwargs=0.3"),
        ((["a", "b"],), {"combiner_kwargs": {"dropout": 2.0}}, "dropout"),
    ],
)
def test_argument_errors(args, kwargs, match):
    model = encoder_stack(num_layers=1)
    transfer.add_adapters(model, TASKS)
    with pytest.raises(ValueError, match=match):
        transfer.add_combiner(model, *args, **kwargs)
    assert wrappers(model)[0][2].combiners == {}
    assert wrappers(model)[0][2].active == "a"


def test_backbone_without_adapters():
    with pytest.raises(ValueError, match="add_adapters"):
        transfer.add_combiner(encoder_stack(num_layers=1), ["a"])


def test_keras_file_recipe_with_a_shared_combination(tmp_path):
    model = encoder_stack()
    inputs = stack_inputs()
    transfer.add_adapters(model, TASKS, reduction_factor=4)
    for seed, task in enumerate(TASKS):
        randomize(adapter_variables(model, task), seed=seed)
    transfer.add_combiner(model, TASKS, "scalearn_plus_plus")
    randomize(model.trainable_weights, seed=7)
    expected = sequence_output(model, inputs)
    path = str(tmp_path / "adapted.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert not wrappers(restored)
    transfer.add_adapters(restored, TASKS, reduction_factor=4)
    transfer.add_combiner(restored, TASKS, "scalearn_plus_plus")
    restored.load_weights(path)
    np.testing.assert_allclose(sequence_output(restored, inputs), expected,
                               atol=1e-5)
