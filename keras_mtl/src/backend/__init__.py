"""The backend-specific per-task gradient engines.

This package is the only place in keras_mtl that imports TensorFlow, JAX or
PyTorch. Each engine module provides `train_step(model, ...)` and
`test_step(model, ...)` with the signature of its Keras trainer,
`output_dependencies(model, outputs)` (which variables each tensor of a
forward pass depends on), `check_distribution(model, training)` (refuses a
data-parallel set-up the step, or with `training=False` the evaluation,
cannot run, before anything changes),
`synchronize_replicas(model)` (gives every replica the same variables before
training), `batch_probe(model, x, y, sw)` (a `Probe` of one batch at the
current variables, and the step's plan, for the analysis tools) and
`restore_on_failure(model)` (a context that gives the model its variables
back after a failed step); PyTorch's also `step_jit_compile(jit_compile)`
(the `jit_compile` Keras builds the step with; as given elsewhere) and
`rule_compiler(jit_compile)` (what compiles the aggregation rule inside an
eager step; `None` elsewhere). `traceable_ops` holds the loops,
conditionals, solves and random draws the rules use, in a form every
backend's compiler traces. Everything else
(losses, aggregation, state, metrics) is shared `keras.ops` code in the
model's `Balancer`.
"""

import keras

_BACKEND = keras.config.backend()

if _BACKEND == "jax":
    from keras_mtl.src.backend.jax_engine import batch_probe
    from keras_mtl.src.backend.jax_engine import check_distribution
    from keras_mtl.src.backend.jax_engine import jit
    from keras_mtl.src.backend.jax_engine import output_dependencies
    from keras_mtl.src.backend.jax_engine import restore_on_failure
    from keras_mtl.src.backend.jax_engine import synchronize_replicas
    from keras_mtl.src.backend.jax_engine import test_step
    from keras_mtl.src.backend.jax_engine import train_step
elif _BACKEND == "tensorflow":
    from keras_mtl.src.backend.tensorflow_engine import batch_probe
    from keras_mtl.src.backend.tensorflow_engine import check_distribution
    from keras_mtl.src.backend.tensorflow_engine import jit
    from keras_mtl.src.backend.tensorflow_engine import output_dependencies
    from keras_mtl.src.backend.tensorflow_engine import restore_on_failure
    from keras_mtl.src.backend.tensorflow_engine import synchronize_replicas
    from keras_mtl.src.backend.tensorflow_engine import test_step
    from keras_mtl.src.backend.tensorflow_engine import train_step
elif _BACKEND == "torch":
    from keras_mtl.src.backend.torch_engine import batch_probe
    from keras_mtl.src.backend.torch_engine import check_distribution
    from keras_mtl.src.backend.torch_engine import jit
    from keras_mtl.src.backend.torch_engine import output_dependencies
    from keras_mtl.src.backend.torch_engine import restore_on_failure
    from keras_mtl.src.backend.torch_engine import rule_compiler
    from keras_mtl.src.backend.torch_engine import step_jit_compile
    from keras_mtl.src.backend.torch_engine import synchronize_replicas
    from keras_mtl.src.backend.torch_engine import test_step
    from keras_mtl.src.backend.torch_engine import train_step
else:

    def _unsupported(*args, **kwargs):
        raise ValueError(
            "MultiTaskModel trains on the 'jax', 'tensorflow' and 'torch' "
            f"backends. Received: KERAS_BACKEND={_BACKEND!r}"
        )

    train_step = test_step = output_dependencies = _unsupported
    check_distribution = synchronize_replicas = batch_probe = _unsupported

    def restore_on_failure(model):
        _unsupported()

    def jit(fn):
        return fn


if _BACKEND != "torch":
    def step_jit_compile(jit_compile):
        """The `jit_compile` Keras builds the training step with: as given
        (PyTorch's engine decides otherwise)."""
        return jit_compile

    def rule_compiler(jit_compile):
        """`None`: Keras compiles the whole step, the rule included."""
        return None
