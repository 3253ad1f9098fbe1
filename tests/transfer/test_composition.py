"""Composition blocks (Stack, BatchSplit, Parallel) and shared adapters."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import layers
from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import ids
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers
from tests.transfer.test_lora_ia3 import reference_backbone

Stack, BatchSplit, Parallel = transfer.Stack, transfer.BatchSplit, (
    transfer.Parallel)


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def bottleneck_numpy(adapter, h):
    down, down_bias, up, up_bias = [numpy(w) for w in adapter.weights]
    return np.maximum(h @ down + down_bias, 0.0) @ up + up_bias


def two_adapter_wrapper(placement):
    adapters = {t: layers.BottleneckAdapter(reduction_factor=2,
                                            residual=False)
                for t in ("a", "b")}
    inner = (keras.layers.LayerNormalization() if placement == "post_norm"
             else keras.layers.Identity())
    wrapper = transfer.AdapterWrapper(inner, placement=placement,
                                      adapters=adapters)
    wrapper.build((None, None, 8))
    randomize(wrapper.weights, seed=1)
    return wrapper


def test_stack_feeds_each_adapter_the_previous_output():
    wrapper = two_adapter_wrapper("output")
    a, b = wrapper.adapters["a"], wrapper.adapters["b"]
    h = np.random.default_rng(2).normal(size=(3, 4, 8)).astype("float32")
    wrapper.set_active(Stack("a", "b"))
    h1 = h + bottleneck_numpy(a, h)
    want = h1 + bottleneck_numpy(b, h1)
    np.testing.assert_allclose(numpy(wrapper(h)), want, atol=1e-5)
    # Beside a projection the deltas read the same input and add up.
    parallel = two_adapter_wrapper("parallel")
    parallel.set_active(Stack("a", "b"))
    a, b = parallel.adapters["a"], parallel.adapters["b"]
    want = h + bottleneck_numpy(a, h) + bottleneck_numpy(b, h)
    np.testing.assert_allclose(numpy(parallel(h)), want, atol=1e-5)
    # Around a closing LayerNorm: LN(s + delta(LN(s))), delta stacked.
    norm = two_adapter_wrapper("post_norm")
    norm.set_active(Stack("b", "a"))
    a, b = norm.adapters["a"], norm.adapters["b"]
    ln = norm.layer
    base = numpy(ln(h))
    h1 = base + bottleneck_numpy(b, base)
    delta = h1 + bottleneck_numpy(a, h1) - base
    want = numpy(ln(h + delta.astype("float32")))
    np.testing.assert_allclose(numpy(norm(h)), want, atol=1e-5)


def test_lora_stack_adds_the_updates_and_ia3_multiplies_the_scales():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config="lora")
    randomize(adapter_variables(backbone, "a"), seed=3)
    randomize(adapter_variables(backbone, "b"), seed=4)
    transfer.set_active_adapter(backbone, Stack("a", "b"))

    def edit(wrapper, kernel):
        deltas = [numpy(wrapper.adapters[t].delta_kernel()) for t in "ab"]
        return kernel + sum(deltas).reshape(kernel.shape)

    inputs = bert_inputs()
    np.testing.assert_allclose(
        sequence_output(backbone, inputs),
        sequence_output(reference_backbone(backbone, edit), inputs),
        atol=1e-5)
    ia3 = tiny_bert()
    transfer.add_adapters(ia3, ["a", "b", "ab"], config="ia3")
    for _, _, wrapper in wrappers(ia3):
        scales = [np.random.default_rng(5).uniform(0.5, 1.5, size=
                  wrapper.adapters[t].scale.shape) for t in "ab"]
        for task, scale in zip("ab", scales):
            wrapper.adapters[task].scale.assign(scale.astype("float32"))
        wrapper.adapters["ab"].scale.assign(
            (scales[0] * scales[1]).astype("float32"))
    transfer.set_active_adapter(ia3, "ab")
    want = sequence_output(ia3, inputs)
    transfer.set_active_adapter(ia3, Stack("a", "b"))
    np.testing.assert_allclose(sequence_output(ia3, inputs), want, atol=1e-5)


def test_batch_split_and_parallel_route_rows_to_adapters():
    backbone = tiny_bert(dropout=0.0)
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    randomize(adapter_variables(backbone, "a"), seed=6)
    randomize(adapter_variables(backbone, "b"), seed=7)
    inputs = bert_inputs()
    per_task = {}
    for task in "ab":
        transfer.set_active_adapter(backbone, task)
        per_task[task] = sequence_output(backbone, inputs)
    split = BatchSplit("a", "b", batch_sizes=[1, 3])
    transfer.set_active_adapter(backbone, split)
    assert ids(backbone.trainable_weights) == ids(
        adapter_variables(backbone, "a") + adapter_variables(backbone, "b"))
    got = sequence_output(backbone, inputs)
    np.testing.assert_allclose(got[:1], per_task["a"][:1], atol=1e-5)
    np.testing.assert_allclose(got[1:], per_task["b"][1:], atol=1e-5)
    transfer.set_active_adapter(backbone, BatchSplit("a", "b",
                                                     batch_sizes=[1, 2]))
    with pytest.raises(ValueError, match="do not add up"):
        backbone(inputs)
    transfer.set_active_adapter(backbone, Parallel("b", "a"))
    outputs = backbone(transfer.replicate_batch(inputs, 2))
    out_b, out_a = transfer.split_batch(outputs["sequence_output"], 2)
    np.testing.assert_allclose(numpy(out_a), per_task["a"], atol=1e-5)
    np.testing.assert_allclose(numpy(out_b), per_task["b"], atol=1e-5)
    transfer.set_active_adapter(backbone, Parallel("a", "b", "a"))
    with pytest.raises(ValueError, match="3 divides"):
        backbone(transfer.replicate_batch(inputs, 2))


def test_prefix_stacks_concatenate_and_splits_need_equal_lengths():
    backbone = tiny_bert()
    short = transfer.PrefixTuningConfig(prefix_length=2, bottleneck_size=4)
    transfer.add_adapters(backbone, ["a", "b"], config=short)
    key = wrappers(backbone)[0][2]
    transfer.set_active_adapter(backbone, Stack("a", "b"))
    assert key.prefix_length == 4
    inputs = bert_inputs()
    assert sequence_output(backbone, inputs).shape == (4, 6, 16)
    transfer.set_active_adapter(backbone, BatchSplit(
        Stack("a", "b"), "a", batch_sizes=[2, 2]))
    with pytest.raises(ValueError, match="lengths"):
        key.prefix_length


def test_nesting_rules_and_refusals():
    with pytest.raises(ValueError, match="takes"):
        Stack("a", Stack("b", "c"))
    with pytest.raises(ValueError, match="takes"):
        BatchSplit("a", BatchSplit("b", batch_sizes=[1]), batch_sizes=[1, 1])
    with pytest.raises(ValueError, match="takes"):
        Parallel("a", Parallel("b"))
    with pytest.raises(ValueError, match="`batch_sizes`"):
        BatchSplit("a", "b", batch_sizes=[1])
    with pytest.raises(ValueError, match="at least one"):
        Stack()
    Stack("a", BatchSplit("b", Stack("c", "d"), batch_sizes=[1, 1]),
          Parallel("a", "b"))  # allowed
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"])
    with pytest.raises(ValueError, match="task_name"):
        transfer.set_active_adapter(backbone, Stack("a", "zzz"))
    with pytest.raises(ValueError, match="task_name"):
        transfer.set_active_adapter(backbone, ["a", "b"])
    prompted = tiny_bert()
    transfer.add_adapters(prompted, ["a", "b"], config=transfer.ConfigUnion(
        "prompt_tuning", "lora"))
    with pytest.raises(ValueError, match="no composition"):
        transfer.set_active_adapter(prompted, Stack("a", "b"))
    assert {w.active for _, _, w in wrappers(prompted)} == {"a"}


def test_compositions_serialise_with_the_model(tmp_path):
    from tests.transfer.test_transfer_layout import assert_same_transfer
    from tests.transfer.test_transfer_layout import randomize_transfer
    from tests.transfer.test_transfer_layout import rebuild
    from tests.transfer.test_transfer_layout import two_heads

    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b", "c"], config="houlsby")
    transfer.add_combiner(backbone, ["a", "b"], "average", name="mean")
    active = Stack("c", BatchSplit("mean", Stack("a", "c"),
                                   batch_sizes=[2, 2]))
    transfer.set_active_adapter(backbone, active)
    model = two_heads(backbone)
    randomize_transfer(model)
    restored = rebuild(model, tmp_path)
    assert_same_transfer(model, restored, bert_inputs())
    found = wrappers(restored.get_layer(backbone.name))
    assert all(w.active == active for _, _, w in found)


def test_shared_adapter_trains_for_every_task_in_a_multi_task_model():
    backbone = tiny_bert(dropout=0.0)
    transfer.add_adapters(backbone, ["vqa", "caption"], shared=True,
                          reduction_factor=4)
    transfer.add_adapters(backbone, "own", reduction_factor=4)
    for _, _, wrapper in wrappers(backbone):
        assert wrapper.adapters["vqa"] is wrapper.adapters["caption"]
        assert wrapper.adapters["own"] is not wrapper.adapters["vqa"]
    per_adapter = 2 * 16 * 4 + 4 + 16
    assert transfer.count_transfer_parameters(backbone) == 2 * per_adapter
    transfer.set_active_adapter(backbone, Parallel("vqa", "caption", "own"))
    # Two adapters per layer train: the shared one and "own".
    assert transfer.count_transfer_parameters(backbone) == 4 * per_adapter
    inputs = backbone.input
    features = backbone(transfer.replicate_batch(inputs, 3))["pooled_output"]
    parts = transfer.split_batch(features, 3)
    model = keras_mtl.MultiTaskModel(inputs, {
        task: keras.layers.Dense(1, name=f"head_{task}")(part)
        for task, part in zip(("vqa", "caption", "own"), parts)})
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={t: "mse" for t in ("vqa", "caption", "own")})
    before = {id(v): numpy(v) for v in backbone.weights}
    rng = np.random.default_rng(8)
    model.fit(bert_inputs(), {t: rng.normal(size=(4, 1))
                              for t in ("vqa", "caption", "own")},
              epochs=2, verbose=0)
    changed = {id(v) for v in backbone.weights
               if not np.array_equal(numpy(v), before[id(v)])}
    shared = {id(v) for v in adapter_variables(backbone, "vqa")}
    own = {id(v) for v in adapter_variables(backbone, "own")}
    assert changed == shared | own
    with pytest.raises(ValueError, match="`shared`"):
        transfer.add_adapters(tiny_bert(), "a", shared="yes")
