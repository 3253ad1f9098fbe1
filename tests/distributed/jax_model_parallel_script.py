"""A keras-hub backbone carrying adapters, with task heads, sharded over 4
virtual CPU devices by `keras.distribution.ModelParallel` and a `LayoutMap`
(2-way data parallel x 2-way model parallel), trains as on one device.

Run in a fresh interpreter with
`XLA_FLAGS=--xla_force_host_platform_device_count=4`.
"""

import keras
import numpy as np

import keras_mtl
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import randomize
from tests.transfer.builders import tiny_bert

LOSSES = {"a": "mse",
          "b": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}


def layout_map(devices):
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*(query|key|value)/kernel"] = (None, "model", None)
    layouts[".*attention_output/kernel"] = ("model", None, None)
    layouts[".*feedforward_intermediate_dense/kernel"] = (None, "model")
    layouts[".*feedforward_output_dense/kernel"] = ("model", None)
    layouts[".*adapter/down_kernel"] = ("model", None)
    layouts[".*adapter/up_kernel"] = (None, "model")
    layouts["head_.*/kernel"] = ("model", None)
    return layouts


def build(case):
    backbone = tiny_bert(seed=1)
    keras_mtl.transfer.add_adapters(backbone, ["shared"],
                                    reduction_factor=4)
    randomize([v for v in backbone.trainable_variables
               if "adapter" in v.path], seed=2, scale=0.1)
    keras.utils.set_random_seed(3)
    inputs = backbone.input
    pooled = backbone(inputs)["pooled_output"]
    model = keras_mtl.MultiTaskModel(inputs, {
        "a": keras.layers.Dense(1, name="head_a")(pooled),
        "b": keras.layers.Dense(3, name="head_b")(pooled),
    })
    aggregator, mode = case
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSSES,
                  aggregator=aggregator, gradient_mode=mode,
                  features="pooled_dense" if mode == "features" else None)
    return model


def train(case, distribution):
    keras.distribution.set_distribution(distribution)
    model = build(case)
    x = bert_inputs(batch=32, seed=0)
    rng = np.random.default_rng(1)
    y = {"a": rng.normal(size=(32, 1)).astype("float32"),
         "b": rng.integers(0, 3, size=(32,)).astype("int32")}
    y["a"][8:] = np.nan  # Labels of task a only in the first shard.
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    keras.distribution.set_distribution(None)
    return model


def main():
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == 4, devices
    failures = []
    for case in (("upgrad", "parameters"), ("mgda", "features")):
        single = train(case, None)
        sharded = train(case, keras.distribution.ModelParallel(
            layout_map=layout_map(devices), batch_dim_name="batch"))
        kernel = next(v for v in sharded.trainable_variables
                      if v.path.endswith("adapter/up_kernel"))
        spec = tuple(kernel.value.sharding.spec)
        if "model" not in spec:
            failures.append(f"{case}: adapter kernel not sharded: {spec}")
        gap = 0.0
        for a, b in zip(single.trainable_variables,
                        sharded.trainable_variables):
            a, b = np.asarray(a.value), np.asarray(b.value)
            gap = max(gap, float(np.abs(a - b).max()))
            if not np.allclose(a, b, rtol=1e-5, atol=1e-5):
                failures.append(f"{case}: weights differ by "
                                f"{np.abs(a - b).max()}")
        print(case, "max|dw| =", gap)
    print("\n".join(failures) or "MODEL_PARALLEL_OK")


if __name__ == "__main__":
    main()
