import os

# Keep numerical comparisons strict and runs reproducible on every backend.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.config.backend() == "jax":
    import jax  # noqa: E402

    jax.config.update("jax_default_matmul_precision", "float32")
