import os
import shutil
import tempfile

# Keep numerical comparisons strict and runs reproducible on every backend.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.config.backend() == "jax":
    import jax  # noqa: E402

    jax.config.update("jax_default_matmul_precision", "float32")

    # XLA's compiler takes most of the JAX suite's time, and many tests
    # compile the same programs (the same small model and rule in another
    # test, a second `fit`, a reloaded model): JAX's persistent cache,
    # shared by the run's workers and removed at its end, compiles each
    # once (CI time: about a quarter less).
    # (pytest-xdist's workers are children of the run's main process.)
    _RUN = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else \
        os.getpid()
    _CACHE = os.path.join(tempfile.gettempdir(),
                          f"keras_mtl_tests_jax_cache_{_RUN}")
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    def pytest_sessionfinish(session):
        if not hasattr(session.config, "workerinput"):
            shutil.rmtree(_CACHE, ignore_errors=True)

    import pytest  # noqa: E402

    @pytest.fixture(autouse=True, scope="module")
    def _release_compiled_programs():
        # Each XLA CPU executable holds memory mappings; a whole test run
        # compiles thousands (solver loops compile on every eager call) and
        # would exhaust the kernel's map limit (vm.max_map_count, 65530),
        # which crashes XLA's compiler. Drop them after every test module.
        yield
        jax.clear_caches()
