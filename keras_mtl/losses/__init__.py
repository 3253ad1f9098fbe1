"""Losses for multi-task models (public API)."""

from keras_mtl.src.losses.esmm_loss import ESMMLoss
