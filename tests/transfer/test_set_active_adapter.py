import numpy as np
import pytest

from tests.transfer.builders import adapter_variables
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import ids
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import stack_inputs
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers


def test_switching_changes_the_computation_and_the_trainable_weights():
    model = encoder_stack()
    inputs = stack_inputs()
    base = sequence_output(model, inputs)
    transfer.add_adapters(model, ["a", "b"], reduction_factor=4)
    randomize(adapter_variables(model, "a"), seed=1)
    randomize(adapter_variables(model, "b"), seed=2)
    out_a = sequence_output(model, inputs)

    transfer.set_active_adapter(model, "b")
    out_b = sequence_output(model, inputs)
    assert ids(model.trainable_weights) == ids(adapter_variables(model, "b"))
    assert all(w.active == "b" for _, _, w in wrappers(model))
    assert np.abs(out_a - out_b).max() > 1e-3

    transfer.set_active_adapter(model, "a")
    np.testing.assert_allclose(sequence_output(model, inputs), out_a,
                               atol=1e-6)
    assert ids(model.trainable_weights) == ids(adapter_variables(model, "a"))

    # None: the original function, nothing trainable.
    transfer.set_active_adapter(model, None)
    np.testing.assert_allclose(sequence_output(model, inputs), base,
                               atol=1e-6)
    assert model.trainable_weights == []
    assert transfer.count_transfer_parameters(model) == 0


def test_unknown_task_and_backbone_without_adapters():
    model = encoder_stack(num_layers=1)
    with pytest.raises(ValueError, match="add_adapters"):
        transfer.set_active_adapter(model, "a")
    with pytest.raises(ValueError, match="add_adapters"):
        transfer.count_transfer_parameters(model)
    transfer.add_adapters(model, ["a"])
    with pytest.raises(ValueError, match=r"task_name='z'"):
        transfer.set_active_adapter(model, "z")
    with pytest.raises(ValueError, match=r"task_name='z'"):
        transfer.count_transfer_parameters(model, "z")
    assert wrappers(model)[0][2].active == "a"
