"""Every example runs (on a small budget), so examples cannot go stale."""

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


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
