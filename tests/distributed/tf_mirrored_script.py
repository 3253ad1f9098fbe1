"""Two logical CPU devices under MirroredStrategy against one device (run
in a fresh interpreter: TensorFlow must see the devices before it starts)."""

import contextlib
import os
import sys
import tempfile

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tests.distributed import runs  # noqa: E402


def main(cases):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    # 61 samples: the last global batch splits 7 + 6 over the replicas.
    data = runs.problem(61)
    failures = []
    # Batch parts are those of one device only where each replica's batch
    # holds a multiple of them (no uneven last batch).
    even = runs.problem(64)
    for case in cases:
        case_data = even if case[0] in runs.SPLIT_RULES else data
        single = runs.snapshot(*runs.train(case, case_data))
        multi = runs.snapshot(*runs.train(case, case_data,
                                          strategy.scope()))
        bad = runs.differences(single, multi)
        print(case, "max|dw| =", runs.max_weight_gap(single, multi))
        failures += [f"{case}: {b}" for b in bad]
    # Saving from a distributed run and resuming on one device, and the
    # reverse, continue as one uninterrupted run.
    case = ("pcgrad", "parameters")
    folder = tempfile.mkdtemp()
    reference = runs.snapshot(*runs.train(case, data))
    for distributed_first in (True, False):
        model, _ = runs.train(
            case, data, strategy.scope() if distributed_first else None,
            epochs=1)
        path = os.path.join(folder, "m.keras")
        model.save(path)
        with (contextlib.nullcontext() if distributed_first
              else strategy.scope()):
            loaded = keras.saving.load_model(path)
        resumed = runs.snapshot(*runs.train(case, data, epochs=1,
                                            model=loaded))
        bad = [b for b in runs.differences(reference, resumed)
               if not b.startswith("log/")]
        print("resume, distributed first:", distributed_first, "max|dw| =",
              runs.max_weight_gap(reference, resumed))
        failures += [f"resume: {b}" for b in bad]
    failures += extra_checks(strategy, data)
    print("\n".join(failures) or "MIRRORED_OK")


def extra_checks(strategy, data):
    failures = []
    # A NaN on one replica only: the finiteness check runs on the reduced
    # gradients, so every replica skips the step, as one device does.
    x, y, sw = data
    x = x.copy()
    x[20] = np.nan  # Batch 1, first replica's half.
    case = ("mgda", "parameters")
    single = runs.snapshot(*runs.train(case, (x, y, sw)))
    multi = runs.snapshot(*runs.train(case, (x, y, sw), strategy.scope()))
    if single["log/skipped_steps"] != 1.0:
        failures.append(f"NaN batch: {single['log/skipped_steps']} skipped")
    failures += [f"NaN batch: {d}" for d in runs.differences(single, multi)
                 if "evaluate" not in d]
    # Mixed precision under the strategy: the loss-scale optimizer receives
    # reduced gradients (float16 forward passes: a looser tolerance).
    keras.mixed_precision.set_global_policy("mixed_float16")
    single = runs.snapshot(*runs.train(case, data))
    multi = runs.snapshot(*runs.train(case, data, strategy.scope()))
    keras.mixed_precision.set_global_policy("float32")
    print("mixed_float16 max|dw| =", runs.max_weight_gap(single, multi))
    failures += [f"mixed_float16: {d}"
                 for d in runs.differences(single, multi, 1e-3, 1e-3)]
    # Refused set-ups: they change nothing.
    with strategy.scope():
        model = runs.build()
        model.compile(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
                      loss=runs.LOSSES)
    failures += refused(model, data, "20582")
    central = tf.distribute.experimental.CentralStorageStrategy()
    with central.scope():
        model = runs.build()
        runs.compile_case(model, case)
    failures += refused(model, data, "CentralStorageStrategy")
    # Gramian mode cannot sum the replicas' Gramians: training is refused,
    # evaluation runs.
    with strategy.scope():
        model = runs.build()
        runs.compile_case(model, ("mgda", "gramian"))
    failures += refused(model, data, "Received: 2 replicas")
    x, y, sw = data
    try:
        model.evaluate(x, y, sample_weight=sw, verbose=0)
    except ValueError as error:
        failures.append(f"gramian-mode evaluation refused: {error}")
    return failures


def refused(model, data, expected):
    before = [v.numpy() for v in model.trainable_variables]
    try:
        runs.train(None, data, model=model, epochs=1)
    except ValueError as error:
        if expected not in str(error):
            return [f"refusal without {expected!r}: {error}"]
    else:
        return [f"not refused: {expected}"]
    changed = any(not np.array_equal(a, v.numpy())
                  for a, v in zip(before, model.trainable_variables))
    return [f"refusal changed the weights: {expected}"] if changed else []


if __name__ == "__main__":
    names = sys.argv[1:]
    main([c for c in runs.CASES if not names or c[0] in names])
