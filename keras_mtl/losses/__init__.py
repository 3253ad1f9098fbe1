"""Losses for multi-task models (public API)."""

from keras_mtl.src.losses.esmm_loss import ESMMLoss
from keras_mtl.src.losses.multi_teacher_distillation import (
    MultiTeacherDistillation,
)
from keras_mtl.src.losses.multi_teacher_distillation import (
    teacher_weights_from_similarity,
)
from keras_mtl.src.losses.rep_mtl import RepMTL
