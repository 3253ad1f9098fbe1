import json
import os
import zipfile

import keras
import numpy as np
import pytest

from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import snapshot
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny BERT with two trained-looking adapters; "b" saved alone."""
    backbone = tiny_bert(seed=0)
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    randomize(adapter_variables(backbone, "a"), seed=1)
    randomize(adapter_variables(backbone, "b"), seed=2)
    transfer.set_active_adapter(backbone, "b")
    path = tmp_path_factory.mktemp("adapters") / "b.adapter.npz"
    transfer.save_adapter(backbone, "b", path)
    return backbone, path


def test_round_trip_into_a_freshly_injected_backbone(trained):
    backbone, path = trained
    inputs = bert_inputs()
    expected = sequence_output(backbone, inputs)
    # Same backbone weights (same seed), fresh adapters, then the file.
    fresh = tiny_bert(seed=0)
    transfer.add_adapters(fresh, ["b"], reduction_factor=4)
    assert np.abs(sequence_output(fresh, inputs) - expected).max() > 1e-3
    transfer.load_adapter(fresh, "b", path)
    np.testing.assert_allclose(sequence_output(fresh, inputs), expected,
                               atol=1e-5)
    for loaded, saved in zip(
        snapshot(adapter_variables(fresh, "b")),
        snapshot(adapter_variables(backbone, "b")),
    ):
        np.testing.assert_array_equal(loaded, saved)


def test_the_file_holds_one_adapter_only(trained):
    _, path = trained
    with np.load(path) as data:
        sizes = sum(data[k].size for k in data.files if k != "__meta__")
    assert sizes == 2 * 148


def test_loading_adds_a_missing_adapter_under_any_name(trained):
    backbone, path = trained
    inputs = bert_inputs()
    expected = sequence_output(backbone, inputs)
    fresh = tiny_bert(seed=0)
    transfer.load_adapter(fresh, "rte", path)
    assert wrappers(fresh)[0][2].names == ["rte"]
    np.testing.assert_allclose(sequence_output(fresh, inputs), expected,
                               atol=1e-5)
    assert [w.trainable for w in fresh.weights].count(True) == 8


def test_wrong_sizes_are_rejected(trained):
    _, path = trained
    wider = encoder_stack(hidden_dim=32)
    with pytest.raises(ValueError, match="hidden size 16.*hidden size 32"):
        transfer.load_adapter(wider, "b", path)
    assert not wrappers(wider)
    deeper = encoder_stack(num_layers=3)
    with pytest.raises(ValueError, match="2 encoder layers.*3 encoder"):
        transfer.load_adapter(deeper, "b", path)
    narrow = transfer.add_adapters(encoder_stack(), ["b"], reduction_factor=8)
    with pytest.raises(ValueError, match=r"bottleneck 4\).*bottleneck 2\)"):
        transfer.load_adapter(narrow, "b", path)
    houlsby = transfer.add_adapters(encoder_stack(), ["b"], config="houlsby")
    with pytest.raises(ValueError, match="'houlsby' adapters"):
        transfer.load_adapter(houlsby, "b", path)
    pre_ln = encoder_stack(normalize_first=True)
    with pytest.raises(ValueError, match="positions"):
        transfer.load_adapter(pre_ln, "b", path)
    assert not wrappers(pre_ln)


def test_save_errors_and_foreign_files(trained, tmp_path):
    backbone, _ = trained
    with pytest.raises(ValueError, match=r"task_name='z'"):
        transfer.save_adapter(backbone, "z", tmp_path / "z.npz")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a keras_mtl adapter file"):
        transfer.load_adapter(encoder_stack(), "b", other)


def test_keras_file_recipe(trained, tmp_path):
    """`.keras` keeps the backbone config only: re-inject, reload weights."""
    backbone, _ = trained
    inputs = bert_inputs()
    expected = sequence_output(backbone, inputs)
    path = str(tmp_path / "adapted.keras")
    backbone.save(path)
    restored = keras.saving.load_model(path)
    assert not wrappers(restored)
    transfer.add_adapters(restored, ["a", "b"], reduction_factor=4)
    transfer.set_active_adapter(restored, "b")
    restored.load_weights(path)
    np.testing.assert_allclose(sequence_output(restored, inputs), expected,
                               atol=1e-5)


# All or nothing: damaged files change nothing, and name what is wrong.


def _rewrite(source, target, edit):
    """Copies the arrays of the adapter file `source`, edited, to `target`."""
    with np.load(source) as data:
        arrays = {key: data[key] for key in data.files}
    edit(arrays)
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)


def _missing(arrays):
    del arrays["position_1_weight_2"]


def _reshaped(arrays):
    arrays["position_0_weight_0"] = arrays["position_0_weight_0"].reshape(
        4, 16
    )


def _extra(arrays):
    arrays["stray"] = np.zeros(3, "float32")


def _pickled(arrays):
    arrays["position_0_weight_1"] = np.array([{"a": 1}], dtype=object)


def _integer(arrays):
    arrays["position_1_weight_3"] = np.zeros(16, "int32")


DAMAGES = {
    "missing": (_missing, r"missing arrays \['position_1_weight_2'\]"),
    "reshaped": (
        _reshaped,
        r"position_0_weight_0 \(expected shape \(16, 4\) of float32, "
        r"received shape \(4, 16\) of float32\)",
    ),
    "extra": (_extra, r"unexpected arrays \['stray'\]"),
    "integer": (
        _integer,
        r"position_1_weight_3 \(expected shape \(16,\) of float32, "
        r"received shape \(16,\) of int32\)",
    ),
}


def _damaged(source, folder, damage):
    path = folder / f"{damage}.adapter.npz"
    if damage == "truncated":
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, r"truncated or damaged"
    if damage == "garbage":
        path.write_bytes(b"not an npz file at all" * 10)
        return path, r"not a valid NumPy `\.npz` file"
    if damage == "bad_crc":
        data = bytearray(source.read_bytes())
        # A byte of the first weight's data (the ZIP stores it uncompressed).
        with np.load(source) as stored:
            value = stored["position_0_weight_0"].tobytes()[:16]
        data[data.index(value) + 3] ^= 0xFF
        path.write_bytes(bytes(data))
        return path, r"truncated or damaged"
    if damage == "foreign_zip":
        with zipfile.ZipFile(path, "w") as archive:
            with np.load(source) as stored:
                for key in stored.files:
                    with archive.open(f"{key}.npy", "w") as member:
                        np.save(member, stored[key])
            archive.writestr("position_0_weight_0", "text, not an array")
        return path, r"member 'position_0_weight_0' is not a NumPy array"
    if damage == "pickled":
        _rewrite(source, path, _pickled)
        return path, r"truncated or damaged \(.*allow_pickle=False"
    edit, pattern = DAMAGES[damage]
    _rewrite(source, path, edit)
    return path, pattern


def _existing_backbone():
    backbone = tiny_bert(seed=0)
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    randomize(adapter_variables(backbone, "a"), seed=3)
    randomize(adapter_variables(backbone, "b"), seed=4)
    return backbone


def _state(backbone):
    """Everything `load_adapter` may change: layers, weights, flags."""
    structure = [
        (index, position, list(w.adapters), list(w.combiners), w.active)
        for index, position, w in wrappers(backbone)
    ]
    layers = [id(layer) for layer in backbone._flatten_layers()]
    variables = [(id(v), v.path, v.trainable) for v in backbone.weights]
    return structure, layers, variables, snapshot(backbone.weights)


def _assert_same_state(before, after):
    assert after[:3] == before[:3]
    assert len(after[3]) == len(before[3])
    for old, new in zip(before[3], after[3]):
        np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("target", ["existing", "fresh"])
@pytest.mark.parametrize(
    "damage",
    [*DAMAGES, "truncated", "garbage", "bad_crc", "foreign_zip", "pickled"],
)
def test_damaged_files_change_nothing(trained, tmp_path, damage, target):
    _, source = trained
    path, pattern = _damaged(source, tmp_path, damage)
    backbone = _existing_backbone() if target == "existing" else tiny_bert()
    before = _state(backbone)
    with pytest.raises(ValueError, match=pattern) as info:
        transfer.load_adapter(backbone, "b", path)
    assert str(path) in str(info.value)
    _assert_same_state(before, _state(backbone))
    if target == "fresh":
        assert not wrappers(backbone)
        assert all(v.trainable for v in backbone.weights)


def test_every_problem_is_listed_at_once(trained, tmp_path):
    _, source = trained
    path = tmp_path / "many.adapter.npz"

    def edit(arrays):
        _missing(arrays)
        _reshaped(arrays)
        _extra(arrays)

    _rewrite(source, path, edit)
    backbone = _existing_backbone()
    before = _state(backbone)
    with pytest.raises(
        ValueError,
        match=r"missing arrays \['position_1_weight_2'\]; mismatched arrays "
        r"position_0_weight_0 .*; unexpected arrays \['stray'\]",
    ):
        transfer.load_adapter(backbone, "b", path)
    _assert_same_state(before, _state(backbone))


def test_bad_metadata_changes_nothing(trained, tmp_path):
    _, source = trained
    with np.load(source) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays["__meta__"]))
    cases = {
        "future": ({**meta, "format_version": 99}, "format_version 99"),
        "no_shapes": (
            {k: v for k, v in meta.items() if k != "shapes"},
            r"missing entries \['shapes'\]",
        ),
        "bad_factor": (
            {**meta, "adapter_config": {
                **meta["adapter_config"],
                "config": {**meta["adapter_config"]["config"],
                           "hidden_units": -2}}},
            "adapter arguments",
        ),
        "unknown_kind": (
            {**meta, "adapter_config": {"class_name": "Foo", "config": {}}},
            "adapter arguments",
        ),
        "legacy_bad_factor": (
            {**meta, "format_version": 1, "reduction_factor": 4,
             "activation": "relu", "hidden_units": -2},
            "adapter arguments",
        ),
        "not_json": ("{oops", "invalid metadata"),
    }
    for name, (new_meta, pattern) in cases.items():
        path = tmp_path / f"{name}.adapter.npz"
        text = new_meta if isinstance(new_meta, str) else json.dumps(new_meta)
        with open(path, "wb") as handle:
            np.savez(handle, **{**arrays, "__meta__": np.array(text)})
        backbone = tiny_bert()
        before = _state(backbone)
        with pytest.raises(ValueError, match=pattern):
            transfer.load_adapter(backbone, "b", path)
        _assert_same_state(before, _state(backbone))


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    backbone = tiny_bert()
    with pytest.raises(FileNotFoundError):
        transfer.load_adapter(backbone, "b", tmp_path / "none.npz")
    assert not wrappers(backbone)


def test_float64_arrays_are_cast_on_load(trained, tmp_path):
    backbone, source = trained
    path = tmp_path / "float64.adapter.npz"

    def edit(arrays):
        for key in arrays:
            if key != "__meta__":
                arrays[key] = arrays[key].astype("float64")

    _rewrite(source, path, edit)
    fresh = transfer.load_adapter(tiny_bert(), "b", path)
    for loaded, saved in zip(
        snapshot(adapter_variables(fresh, "b")),
        snapshot(adapter_variables(backbone, "b")),
    ):
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, saved)


# Atomic saves.


def test_save_writes_the_exact_path_and_no_temporary_file(trained, tmp_path):
    backbone, _ = trained
    path = tmp_path / "b.adapter"
    transfer.save_adapter(backbone, "b", path)
    assert sorted(os.listdir(tmp_path)) == ["b.adapter"]
    fresh = transfer.load_adapter(tiny_bert(), "b", path)
    for loaded, saved in zip(
        snapshot(adapter_variables(fresh, "b")),
        snapshot(adapter_variables(backbone, "b")),
    ):
        np.testing.assert_array_equal(loaded, saved)


def test_a_failed_save_leaves_the_old_file(trained, tmp_path, monkeypatch):
    backbone, _ = trained
    path = tmp_path / "adapter.npz"
    transfer.save_adapter(backbone, "b", path)
    original = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="No space left"):
        transfer.save_adapter(backbone, "a", path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["adapter.npz"]
    monkeypatch.undo()

    def broken_conversion(value):
        raise RuntimeError("device lost")

    monkeypatch.setattr(keras.ops, "convert_to_numpy", broken_conversion)
    with pytest.raises(RuntimeError, match="device lost"):
        transfer.save_adapter(backbone, "a", path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["adapter.npz"]
