"""Every example runs (on a small budget), so examples cannot go stale."""

import importlib.util
import pathlib

import keras
import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"

# The longer example scripts run on PyTorch and TensorFlow. Eager JAX
# compiles each op on first use, which makes their tiny runs the slowest of
# the suite, and the library code they call is tested on JAX by the unit
# tests (CI time). The quick-start and the distributed example run on every
# backend.
not_on_jax = pytest.mark.skipif(
    keras.config.backend() == "jax",
    reason="Example scripts run on PyTorch and TensorFlow (CI time); the "
    "code they call is tested on JAX by the unit tests.")


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_trains_and_beats_the_mean_predictor(capsys):
    import keras_mtl

    results = load("quickstart").main(epochs=4, num_samples=4000)
    out = capsys.readouterr().out
    assert "Test results (PCGrad)" in out
    _, y = keras_mtl.datasets.synthetic_task_correlation(
        num_samples=4000, num_features=32, correlation=0.5, seed=0
    )
    for task in ("task_1", "task_2"):
        variance = float(y[task][3200:].var())
        assert results[f"{task}_loss"] < 0.9 * variance


@not_on_jax
def test_synthetic_task_correlation_study_prints_the_table(capsys):
    results = load("synthetic_task_correlation_study").main(
        correlations=(1.0, 0.0), seeds=1, models=("shared_bottom", "mmoe"),
        num_samples=2000, epochs=6, learning_rate=3e-3,
    )
    out = capsys.readouterr().out
    assert "correlation p |   Shared-bottom |            MMoE" in out
    assert "Shared-bottom minus MMoE" in out
    for p in (1.0, 0.0):
        variance = results[("variance", p)][0]
        for model in ("shared_bottom", "mmoe"):
            (loss,) = results[(model, p)]
            # Trained models explain most of the label variance.
            assert 0.0 < loss < 0.5 * variance, (model, p, loss, variance)
    assert results[("label_correlation", 1.0)][0] > 0.99
    assert abs(results[("label_correlation", 0.0)][0]) < 0.1


@not_on_jax
def test_census_income_example_on_a_small_synthetic_archive(tmp_path, capsys):
    from tests.datasets.census_archive import make_rows
    from tests.datasets.census_archive import write_archive

    archive = write_archive(
        tmp_path / "census.tar.gz", make_rows(600, seed=0),
        make_rows(300, seed=1),
    )
    # Single-task (plain Keras models) and PLE (a MultiTaskModel); the MMoE
    # and shared-bottom builders are exercised by the synthetic study.
    models = ("single_task", "ple")
    results = load("census_income_mmoe").main(
        groups=(1,), models=models, epochs=3, batch_size=32,
        learning_rate=1e-2, path=archive, cache_dir=tmp_path,
    )
    out = capsys.readouterr().out
    assert "600 training, 150 validation, 150 test rows" in out
    for label in ("Single-task (ours", "PLE (ours", "MMoE paper: MMoE",
                  "PaddleRec MMoE"):
        assert label in out
    assert sorted(results) == sorted(
        (1, m, t) for m in models for t in ("income", "never_married")
    )
    # Each label follows one input column 85% of the time (AUC about 0.85).
    for key, (auc,) in results.items():
        assert 0.7 < auc <= 1.0, (key, auc)


def test_distributed_training_runs_on_the_selected_backend(capsys):
    import keras

    try:
        results = load("distributed_training").main(epochs=1,
                                                    num_samples=1000)
    finally:
        if keras.config.backend() == "jax":
            keras.distribution.set_distribution(None)
    assert "test task_1_loss" in capsys.readouterr().out
    assert all(v == v for v in results.values())  # No NaN.


@not_on_jax
def test_auxiliary_learning_example_compares_the_bilevel_rules(capsys):
    results = load("auxiliary_learning").main(
        epochs=2, num_samples=600, primary_labels=200, seeds=1,
        names=("sum", "auto_lambda"))
    out = capsys.readouterr().out
    assert "Test MSE of the primary task (200 labels" in out
    assert sorted(results) == ["auto_lambda", "sum"]
    for name, (score, weights) in results.items():
        assert np.isfinite(score) and len(weights) == 4, name
    # The softmax weights of Auto-Lambda stay a convex combination.
    assert abs(sum(results["auto_lambda"][1]) - 1.0) < 1e-4


@not_on_jax
def test_conflict_monitor_example_saves_its_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = load("conflict_monitor").main(
        epochs=2, num_samples=512, out_dir=tmp_path)
    assert "Mean gradient cosines" in capsys.readouterr().out
    history = results["monitor"].history
    assert history["cosines"].shape == (8, 3, 3)  # 2 epochs of 4 steps
    assert np.isfinite(history["cosines"]).all()
    assert "cos_task_1_anti_1" in results["history"]
    for path in results["pictures"].values():
        assert path.read_bytes()[:4] == b"\x89PNG", path
