"""`MultiTeacherDistillation` against its formula in float64."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.losses import MultiTeacherDistillation
from keras_mtl.losses import teacher_weights_from_similarity


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference(teachers, student, weights, t):
    q = log_softmax(student / t)
    p = np.exp(log_softmax(teachers / t))
    cross = -(p * q[:, None]).sum(-1)  # (batch, teachers)
    return t * t * (cross * np.asarray(weights)).sum(1)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_matches_the_formula(scale):
    rng = np.random.default_rng(0)
    teachers = (scale * rng.normal(size=(5, 3, 4))).astype("float32")
    student = (scale * rng.normal(size=(5, 4))).astype("float32")
    loss = MultiTeacherDistillation(temperature=3.0, teacher_weights=[1, 2, 1],
                                    reduction=None)
    got = np.asarray(keras.ops.convert_to_numpy(loss(teachers, student)))
    want = reference(teachers.astype("float64"), student.astype("float64"),
                     [0.25, 0.5, 0.25], 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    mean = MultiTeacherDistillation(temperature=3.0)(teachers, student)
    np.testing.assert_allclose(
        float(mean), reference(teachers.astype("float64"),
                               student.astype("float64"), [1 / 3] * 3,
                               3.0).mean(), rtol=1e-4)


def test_a_student_equal_to_its_one_teacher_is_at_the_entropy_minimum():
    logits = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    loss = MultiTeacherDistillation(temperature=1.0)
    at_teacher = float(loss(logits[:, None], logits))
    moved = float(loss(logits[:, None], logits + np.eye(6)[0] * 2))
    assert at_teacher < moved


def test_similarity_weights_and_training_in_a_multi_task_model(tmp_path):
    weights = teacher_weights_from_similarity([1.0, 0.0, -1.0],
                                              temperature=0.5)
    e = np.exp(np.array([2.0, 0.0, -2.0]))
    np.testing.assert_allclose(weights, e / e.sum())
    assert teacher_weights_from_similarity([3.0, 1.0], temperature=1e-6)[
        0] == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 5)).astype("float32")
    teachers = rng.normal(size=(32, 2, 3)).astype("float32")
    inputs = keras.Input((5,))
    model = keras_mtl.MultiTaskModel(inputs, {
        "student": keras.layers.Dense(3, name="student")(inputs)})
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss={
        "student": MultiTeacherDistillation(teacher_weights=weights[:2])})
    history = model.fit(x, {"student": teachers}, epochs=20, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    clone = MultiTeacherDistillation.from_config(
        MultiTeacherDistillation(2.5, [1, 3]).get_config())
    assert clone.temperature == 2.5 and clone.teacher_weights == [0.25, 0.75]


@pytest.mark.parametrize("make, match", [
    (lambda: MultiTeacherDistillation(temperature=0), "`temperature`"),
    (lambda: MultiTeacherDistillation(teacher_weights=[]),
     "`teacher_weights`"),
    (lambda: MultiTeacherDistillation(teacher_weights=[0, 0]),
     "`teacher_weights`"),
    (lambda: teacher_weights_from_similarity([]), "`similarities`"),
    (lambda: teacher_weights_from_similarity([1.0], temperature=-1),
     "`temperature`"),
    (lambda: MultiTeacherDistillation()(np.zeros((2, 3)), np.zeros((2, 3))),
     "stack the teachers"),
])
def test_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
