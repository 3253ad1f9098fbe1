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

from tests.distributed import runs  # noqa: E402


def main(cases):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    data = runs.problem()
    failures = []
    for case in cases:
        single = runs.snapshot(*runs.train(case, data))
        multi = runs.snapshot(*runs.train(case, data, strategy.scope()))
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
    print("\n".join(failures) or "MIRRORED_OK")


if __name__ == "__main__":
    names = sys.argv[1:]
    main([c for c in runs.CASES if not names or c[0] in names])
