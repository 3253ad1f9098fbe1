"""`examples/benchmark_methods.py`: its scores, and a run on tiny archives."""

import os

import keras
import numpy as np
import pytest

from tests.datasets.fake_archives import write_mnist
from tests.datasets.fake_archives import write_qm9
from tests.test_examples import load

bench = load("benchmark_methods")


def test_delta_m_follows_the_definition():
    base = {"a": 0.5, "b": 2.0}
    # Lower is better: +10% on a, -50% on b -> mean -20%.
    assert bench.delta_m({"a": 0.55, "b": 1.0}, base, False) == pytest.approx(
        -20.0)
    # Higher is better: the same changes count the other way round.
    assert bench.delta_m({"a": 0.55, "b": 1.0}, base, True) == pytest.approx(
        20.0)
    assert bench.delta_m(base, base, True) == 0.0


def test_ranks_mean_rank_and_spearman():
    np.testing.assert_array_equal(bench.ranks([3.0, 1.0, 3.0, 2.0]),
                                  [3.5, 1.0, 3.5, 2.0])
    per_task = {"x": {"t1": 0.1, "t2": 0.9}, "y": {"t1": 0.2, "t2": 0.5},
                "z": {"t1": 0.3, "t2": 0.1}}
    # Lower is better: x ranks 1 and 3, y 2 and 2, z 3 and 1.
    assert bench.mean_rank(per_task, False) == {"x": 2.0, "y": 2.0, "z": 2.0}
    per_task["z"]["t2"] = 0.95
    rank = bench.mean_rank(per_task, True)
    assert rank == {"x": 2.5, "y": 2.5, "z": 1.0}
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    # 1 - 6 sum d^2 / (n (n^2 - 1)) without ties: d = (0, 1, -1, 0).
    assert bench.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(
        1 - 6 * 2 / (4 * 15))


def test_published_comparison_uses_the_rules_both_report():
    summary = {m: {"delta_m": value} for m, (_, value)
               in bench.PUBLISHED_QM9.items() if m in ("sum", "mgda",
                                                       "famo")}
    rho, text = bench.compare_with_published(summary)
    assert rho == pytest.approx(1.0)
    assert "| FAMO (`famo`) | 58.5 | 1 | 58.5 | 1 |" in text
    assert bench.compare_with_published({"sum": {"delta_m": 1.0}}) == (
        None, "")
    with pytest.raises(ValueError, match="methods="):
        bench.main(methods=["sum", "not_a_rule"])


@pytest.mark.skipif(
    keras.config.backend() != "torch",
    reason="The example's training loop is the library's, tested on every "
    "backend by the unit tests; its run here is on PyTorch (CI time).")
def test_a_reduced_run_on_tiny_archives(tmp_path, monkeypatch, capsys):
    from keras_mtl.src.datasets import multi_mnist
    from keras_mtl.src.datasets import qm9

    cache = tmp_path / "datasets"
    os.makedirs(cache)
    write_mnist(str(cache / multi_mnist.SOURCE.archive), num_train=48,
                num_test=16)
    write_qm9(str(cache / qm9.SOURCE.archive), n=48)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    methods = ["sum", "nash_mtl", "krum", "f_mtl", "rep_mtl"]
    results = bench.main(methods=methods, seeds=(0,), epochs=1,
                         batch_size=16, qm9_tasks=("mu", "u0", "homo"),
                         output=tmp_path / "results.json")
    out = capsys.readouterr().out
    assert "multi_mnist: test accuracy per task" in out
    assert "qm9: test MAE per task" in out
    assert "Spearman rank correlation over 2 methods" not in out
    assert results["multi_mnist"]["skipped"] == ["krum"]
    assert results["qm9"]["skipped"] == []
    for name, tasks, ran in (
        ("multi_mnist", ("left", "right"), [m for m in methods if m != "krum"]),
        ("qm9", ("mu", "u0", "homo"), methods),
    ):
        summary = results[name]
        ranks = [summary[m]["mean_rank"] for m in ran]
        # Mean ranks average to (M + 1) / 2 over the M methods.
        assert np.mean(ranks) == pytest.approx((len(ran) + 1) / 2)
        for m in ran:
            metrics = summary[m]["metrics"]
            assert set(metrics) == set(tasks)
            assert np.isfinite(summary[m]["delta_m"]), (name, m)
            if name == "multi_mnist":
                assert all(0 <= v <= 1 for v in metrics.values())
            else:
                assert all(v > 0 for v in metrics.values())
    assert (tmp_path / "results.json").read_text().startswith("{")
