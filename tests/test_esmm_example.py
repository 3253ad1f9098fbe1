"""The ESMM example runs on a small budget and shows less pCVR bias than a
CVR model trained on clicked impressions only."""

from tests.test_examples import load


def test_esmm_is_less_biased_than_the_clicked_only_model(capsys):
    results = load("esmm_entire_space").main(num_impressions=8000, epochs=2)
    out = capsys.readouterr().out
    assert "Mean true pCVR over all test impressions" in out
    esmm = results["ESMM (entire space)"]
    base = results["clicked-only CVR"]
    # Selection bias: the clicked-only model overestimates pCVR on the
    # entire space; ESMM's bias is much smaller.
    assert base["bias"] > 0.1
    # ... not from under-fitting: on clicked impressions it is about right.
    assert abs(base["bias_clicked"]) < 0.05
    assert abs(esmm["bias"]) < 0.5 * abs(base["bias"])
    assert esmm["auc"] > base["auc"]
