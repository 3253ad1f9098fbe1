import os

# Keep numerical comparisons strict and runs reproducible on every backend.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.config.backend() == "jax":
    import jax  # noqa: E402

    jax.config.update("jax_default_matmul_precision", "float32")

    import pytest  # noqa: E402

    @pytest.fixture(autouse=True, scope="module")
    def _release_compiled_programs():
        # Each XLA CPU executable holds memory mappings; a whole test run
        # compiles thousands (solver loops compile on every eager call) and
        # would exhaust the kernel's map limit (vm.max_map_count, 65530),
        # which crashes XLA's compiler. Drop them after every test module.
        yield
        jax.clear_caches()
