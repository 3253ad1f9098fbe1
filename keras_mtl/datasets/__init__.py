"""Data sets for multi-task learning (public API)."""

from keras_mtl.src.datasets.census_income import census_income
from keras_mtl.src.datasets.multi_mnist import multi_mnist
from keras_mtl.src.datasets.qm9 import qm9
from keras_mtl.src.datasets.synthetic_task_correlation import (
    synthetic_task_correlation,
)
