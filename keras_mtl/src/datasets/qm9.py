"""QM9: 11 quantum-chemical properties of 130,831 small molecules.

The molecules and their B3LYP/6-31G(2df,p) properties are those of
Ramakrishnan, Dral, Rupp and von Lilienfeld, "Quantum chemistry structures and
properties of 134 kilo molecules", Scientific Data 1, 2014 (the 130,831 that
pass the consistency check). They are read from the PyPI wheel
`qm9pack==1.0.3` (MIT licence, by R. Ramakrishnan), whose CSV files hold the
geometries and the 12 standard properties.

The 11 tasks, their units and the split sizes are those of the multi-task QM9
benchmark of Navon et al., "Multi-Task Learning as a Bargaining Game", ICML
2022 (the PyTorch Geometric targets 0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11):
energies in eV, and U0, U, H and G as atomization energies (the total energy
minus that of the free atoms, with the atomic reference energies of the QM9
data paper). Navon et al. use a message-passing network on the molecular
graph; here each molecule is described by the sorted eigenvalues of its
Coulomb matrix (Rupp et al., PRL 108, 058301, 2012), a fixed 29-number vector
that a small MLP can learn from on a CPU.
"""

import csv
import io
import os
import zipfile

import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.datasets import archives

SOURCE = archives.Source(
    dataset="QM9",
    registry="pypi",
    package="qm9pack",
    version="1.0.3",
    archive="qm9pack-1.0.3-py3-none-any.whl",
    sha256="1d88c2988007c6778e717ee3224cf511bd60e10732ebe3b7ed500ea5af05c9f0",
)
MEMBERS = tuple(f"qm9pack/data/qm9_part{i}.csv" for i in (1, 2, 3))
MAX_ATOMS = 29
ELEMENTS = ("H", "C", "N", "O", "F")
CHARGE = {"H": 1.0, "C": 6.0, "N": 7.0, "O": 8.0, "F": 9.0}
HARTREE_TO_EV = 27.211386246
ANGSTROM_TO_BOHR = 1.0 / 0.529177210903
# Energies of the free atoms H, C, N, O, F in Hartree (QM9's `atomref`
# table, B3LYP/6-31G(2df,p)), per total-energy column.
ATOM_ENERGY = {
    "InternalEnergy_0K_au": (-0.500273, -37.846772, -54.583861, -75.064579,
                             -99.718730),
    "InternalEnergy_298K_au": (-0.498857, -37.845355, -54.582445, -75.063162,
                               -99.717314),
    "Enthalphy_298K_au": (-0.497912, -37.844411, -54.581501, -75.062219,
                          -99.716370),
    "GibbsFreeEnergy_298K_au": (-0.510927, -37.861317, -54.598897,
                                -75.079532, -99.733544),
}
# task -> (CSV column, unit, factor to that unit, whether atomization).
TARGETS = {
    "mu": ("Dipole_debye", "D", 1.0, False),
    "alpha": ("Polarizability_bohr3", "bohr^3", 1.0, False),
    "homo": ("HOMO_au", "eV", HARTREE_TO_EV, False),
    "lumo": ("LUMO_au", "eV", HARTREE_TO_EV, False),
    "gap": ("HOMO_LUMO_gap_au", "eV", HARTREE_TO_EV, False),
    "r2": ("R2_bohr2", "bohr^2", 1.0, False),
    "zpve": ("ZPVE_au", "eV", HARTREE_TO_EV, False),
    "u0": ("InternalEnergy_0K_au", "eV", HARTREE_TO_EV, True),
    "u": ("InternalEnergy_298K_au", "eV", HARTREE_TO_EV, True),
    "h": ("Enthalphy_298K_au", "eV", HARTREE_TO_EV, True),
    "g": ("GibbsFreeEnergy_298K_au", "eV", HARTREE_TO_EV, True),
    "cv": ("Heatcapacity_Cv_cal_mol_K", "cal/(mol K)", 1.0, False),
}
# Navon et al.'s 11 tasks, in their order (every property but the gap).
NAVON_TASKS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "u0", "u", "h",
               "g", "cv")
SPLIT = {"test": 10_000, "val": 10_000}
CACHE_FORMAT = 1


def coulomb_eigenspectrum(charges, positions):
    """Sorted eigenvalues of Coulomb matrices, zero-padded molecules.

    `C_ii = 0.5 Z_i^2.4`, `C_ij = Z_i Z_j / |R_i - R_j|` (Rupp et al. 2012).

    Args:
        charges: `(n, atoms)` nuclear charges, 0 for padding atoms.
        positions: `(n, atoms, 3)` positions in Bohr.

    Returns:
        `(n, atoms)` float64 eigenvalues, by decreasing absolute value;
        padding atoms give zero eigenvalues (the padded matrix has zero
        rows and columns).
    """
    z = np.asarray(charges, np.float64)
    r = np.asarray(positions, np.float64)
    distance = np.linalg.norm(r[:, :, None] - r[:, None], axis=-1)
    atoms = z.shape[1]
    diagonal = np.eye(atoms, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        matrix = z[:, :, None] * z[:, None] / np.where(diagonal, 1, distance)
    matrix = np.where(diagonal, 0.5 * z[:, :, None] ** 2.4, matrix)
    matrix = np.where((z[:, :, None] > 0) & (z[:, None] > 0), matrix, 0.0)
    values = np.linalg.eigvalsh(matrix)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1)


def _numbers(text):
    """The floats of a nested list written as text (`0.` is allowed)."""
    return [float(v) for v in text.replace("[", " ").replace("]", " ")
            .split(",")]


def _read_rows(wheel):
    """Yields the CSV rows (dicts) of the three parts, in file order."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in MEMBERS:
                try:
                    handle = archive.open(member)
                except KeyError as error:
                    raise OSError(
                        f"The archive {wheel!r} has no member {member!r}; it "
                        f"is not the {SOURCE.spec} wheel."
                    ) from error
                with io.TextIOWrapper(handle, encoding="utf-8") as text:
                    yield from csv.DictReader(text)
    except zipfile.BadZipFile as error:
        raise OSError(
            f"Could not read {wheel!r} as a wheel (zip) ({error})."
        ) from error


def _decode(wheel):
    """Charges, positions, element counts and raw properties of every row."""
    charges, positions, names, properties = [], [], [], []
    columns = sorted({column for column, *_ in TARGETS.values()})
    for number, row in enumerate(_read_rows(wheel), start=2):
        try:
            symbols = [s.strip(" '\"") for s in
                       row["Elements"].strip("[]").split(",")]
            xyz = np.array(_numbers(row["XYZ_Ang"])).reshape(-1, 3)
            if len(symbols) != len(xyz) or len(xyz) > MAX_ATOMS:
                raise ValueError("atom counts differ")
            z = [CHARGE[s] for s in symbols]
            properties.append([float(row[c]) for c in columns])
        except (KeyError, ValueError) as error:
            raise OSError(
                f"Row {number} of the QM9 CSV files cannot be read ({error})."
            ) from error
        charges.append(z)
        positions.append(xyz * ANGSTROM_TO_BOHR)
        names.append(row["XYZ_file"])
    n = len(charges)
    z = np.zeros((n, MAX_ATOMS))
    r = np.zeros((n, MAX_ATOMS, 3))
    for i, (zi, ri) in enumerate(zip(charges, positions)):
        z[i, : len(zi)] = zi
        r[i, : len(zi)] = ri
    spectrum = np.concatenate([
        coulomb_eigenspectrum(z[i : i + 8192], r[i : i + 8192])
        for i in range(0, n, 8192)
    ]) if n else np.zeros((0, MAX_ATOMS))
    counts = np.stack(
        [(z == CHARGE[e]).sum(axis=1) for e in ELEMENTS], axis=1
    )
    arrays = {
        "spectrum": spectrum,
        "counts": counts.astype("int16"),
        "names": np.array(names, dtype=str),
    }
    for column, values in zip(columns, np.array(properties).reshape(n, -1).T):
        arrays[f"raw__{column}"] = values
    return arrays


def _targets(arrays, tasks):
    result = {}
    for task in tasks:
        column, _, factor, atomization = TARGETS[task]
        value = arrays[f"raw__{column}"]
        if atomization:
            value = value - arrays["counts"] @ np.array(ATOM_ENERGY[column])
        result[task] = (value * factor).astype("float32")[:, None]
    return result


@keras_mtl_export("keras_mtl.datasets.qm9")
def qm9(
    tasks=NAVON_TASKS,
    split_seed=0,
    path=None,
    cache_dir=None,
    download=True,
    with_info=False,
):
    """QM9 with the 11 tasks of the Nash-MTL benchmark, as vectors.

    Every molecule is described by the sorted eigenvalues of its Coulomb
    matrix (Rupp et al., 2012; positions in Bohr, zero-padded to the 29
    atoms of the largest molecule), standardised with the training mean and
    standard deviation. A molecular graph network reaches far lower errors;
    this representation trains in minutes on a CPU, and the benchmark's
    use, comparing methods on the same model, stays meaningful.

    Tasks (Navon et al., 2022; PyTorch Geometric's units): `"mu"` dipole
    moment (D), `"alpha"` polarizability (bohr^3), `"homo"`, `"lumo"`
    orbital energies (eV), `"r2"` electronic spatial extent (bohr^2),
    `"zpve"` zero-point vibrational energy (eV), `"u0"`, `"u"`, `"h"`, `"g"`
    atomization internal energy at 0 K and 298 K, enthalpy and free energy
    (eV), `"cv"` heat capacity (cal/(mol K)); `"gap"` (eV) may be asked for
    too. Targets are in these units, not standardised.

    Split: a seeded random permutation of the 130,831 molecules; the first
    10,000 are the test set, the next 10,000 the validation set, and the
    remaining 110,831 the training set, the sizes of Navon et al. (A file
    of at most 20,000 molecules, such as a test fixture, is split 1:1:2.)

    The molecules come from the wheel `qm9pack==1.0.3` on PyPI (104 MB).
    When no `path` is given, it is looked up in `cache_dir` and otherwise
    fetched with `python -m pip download --no-deps qm9pack==1.0.3`, checked
    against its sha256 and kept in `cache_dir`. The first load parses the
    CSV files and diagonalises the Coulomb matrices (about a minute); the
    result is cached next to the wheel as `qm9_<sha256 prefix>.npz`.

    Args:
        tasks: names of the tasks, in output order; defaults to Navon et
            al.'s 11.
        split_seed: seed of the split permutation.
        path: optional path of the wheel already on disk.
        cache_dir: directory of the wheel and of the decoded cache; defaults
            to `$KERAS_HOME/datasets` or `~/.keras/datasets`.
        download: whether to run pip when the wheel is not cached.
        with_info: whether to also return a dict with `"tasks"`, `"units"`
            (task -> unit), `"feature_mean"`, `"feature_std"` and the
            molecules' `"names"` per split.

    Returns:
        `(x_train, y_train), (x_val, y_val), (x_test, y_test)`: `x` float32
        `(n, 29)`, `y` a dict `{task: float32 (n, 1)}`; with
        `with_info=True`, a fourth element, the info dict.

    Raises:
        ValueError: for an unknown or repeated task.
        FileNotFoundError: when `path` does not exist, or the wheel is not
            cached and `download=False`.
        RuntimeError: when pip cannot download the wheel.
        OSError: when the archive is not the expected one.

    Example:

    A tiny wheel with the same layout (the real one is fetched when `path`
    is left out): 12 water molecules of different sizes.

    >>> import csv, io, os, tempfile, zipfile
    >>> from keras_mtl.src.datasets import qm9 as q
    >>> columns = ["XYZ_file", "Elements", "XYZ_Ang"] + sorted(
    ...     {column for column, *_ in q.TARGETS.values()})
    >>> directory = tempfile.mkdtemp()
    >>> wheel = os.path.join(directory, "qm9.whl")
    >>> with zipfile.ZipFile(wheel, "w") as archive:
    ...     for part, member in enumerate(q.MEMBERS):
    ...         text = io.StringIO()
    ...         writer = csv.writer(text)
    ...         writer.writerow(columns)
    ...         for i in range(4):
    ...             d = 1.0 + 0.1 * i + 0.05 * part
    ...             writer.writerow(
    ...                 [f"w{part}{i}", "['O','H','H']",
    ...                  f"[[0.,0.,0.],[{d},0.,0.],[0.,{d},0.]]"]
    ...                 + [-1.0] * (len(columns) - 3))
    ...         archive.writestr(member, text.getvalue())
    >>> (x, y), (x_val, _), _ = keras_mtl.datasets.qm9(
    ...     path=wheel, cache_dir=directory)
    >>> x.shape, x_val.shape, sorted(y)[:3]
    ((6, 29), (3, 29), ['alpha', 'cv', 'g'])
    """
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TARGETS]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise ValueError(
            f"`tasks` must be distinct names of {tuple(TARGETS)}. "
            f"Received: tasks={tasks!r}"
        )
    cache_dir = archives.resolve_cache_dir(cache_dir)
    wheel = archives.locate(SOURCE, path, cache_dir, download)
    cache = os.path.join(cache_dir, f"qm9_{archives.sha256(wheel)[:16]}.npz")
    arrays = archives.cached_arrays(
        cache, CACHE_FORMAT, lambda: _decode(wheel)
    )
    n = arrays["spectrum"].shape[0]
    order = np.random.default_rng(split_seed).permutation(n)
    first = SPLIT["test"] if n > SPLIT["test"] + SPLIT["val"] else n // 4
    second = 2 * first
    rows = {
        "train": np.sort(order[second:]),
        "val": np.sort(order[first:second]),
        "test": np.sort(order[:first]),
    }
    train = arrays["spectrum"][rows["train"]]
    mean = train.mean(axis=0)
    std = np.where(train.std(axis=0) > 0, train.std(axis=0), 1.0)
    targets = _targets(arrays, tasks)
    result = tuple(
        (
            ((arrays["spectrum"][index] - mean) / std).astype("float32"),
            {task: targets[task][index] for task in tasks},
        )
        for index in rows.values()
    )
    if not with_info:
        return result
    info = {
        "tasks": tasks,
        "units": {task: TARGETS[task][1] for task in tasks},
        "feature_mean": mean,
        "feature_std": std,
        "names": {split: arrays["names"][index]
                  for split, index in rows.items()},
    }
    return (*result, info)
