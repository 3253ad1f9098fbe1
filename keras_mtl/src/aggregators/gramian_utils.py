"""Small linear-algebra helpers on `(T, T)` Gramians, in `keras.ops`."""

from keras import ops


def gradient_norms(gramian):
    """The task gradients' norms, `sqrt(diag(G))` (rounding clipped at 0)."""
    return ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))


def cosine_gramian(gramian):
    """Returns `(finite, norms, cosines)` for a `(T, T)` Gramian.

    `cosines = N^-1 G N^-1` with `N = diag(norms)` is the Gramian of the unit
    task gradients. Its conditioning does not depend on the gradients'
    scales, so solvers that work on it (with weights scaled by the norms)
    stay accurate in float32 when the norms span many orders of magnitude.
    Rows and columns of zero gradients are those of the identity. `finite`
    says whether `G` had only finite entries (it is zeroed otherwise, see
    `zero_if_non_finite`).
    """
    finite, gramian = zero_if_non_finite(ops.cast(gramian, "float32"))
    norms = gradient_norms(gramian)
    inverse = ops.divide_no_nan(1.0, norms)
    cosines = gramian * inverse[:, None] * inverse[None, :]
    missing = ops.cast(norms <= 0.0, "float32")
    cosines = cosines + ops.diag(missing)
    return finite, norms, cosines


def normalize_gramian(gramian, eps=1e-4):
    """`G / trace(G)`: the Gramian of the Frobenius-normalised Jacobian.

    Returns zeros when `trace(G) < eps` (all gradients are tiny), as TorchJD.
    """
    trace = ops.trace(gramian)
    small = trace < eps
    return ops.where(small, 0.0, gramian / ops.where(small, 1.0, trace))


def regularize_gramian(gramian, eps=1e-4):
    """`G + eps I`, which makes the Gramian positive definite."""
    return gramian + eps * ops.eye(gramian.shape[0], dtype=gramian.dtype)


def zero_if_non_finite(matrix):
    """Returns `(finite, safe)`: whether every entry of `matrix` is finite,
    and `matrix`, or zeros where it is not.

    `eigh` and `solve` raise on non-finite input on TensorFlow and PyTorch;
    run them on `safe` and mark the result with
    `ops.where(finite, result, nan)`, so the step is skipped, not crashed.
    """
    finite = ops.all(ops.isfinite(matrix))
    return finite, ops.where(finite, matrix, 0.0)


def psd_pinv(matrix, rtol=1e-6):
    """Moore-Penrose pseudo-inverse of a symmetric PSD matrix (via `eigh`).

    Eigenvalues below `rtol * max_eigenvalue` are treated as 0. All NaN when
    `matrix` has a non-finite entry.
    """
    finite, matrix = zero_if_non_finite(matrix)
    eigenvalues, eigenvectors = ops.eigh(matrix)
    cutoff = rtol * ops.amax(ops.abs(eigenvalues))
    keep = eigenvalues > ops.maximum(cutoff, 1e-30)
    inverse = ops.where(keep, 1.0 / ops.where(keep, eigenvalues, 1.0), 0.0)
    pinv = (eigenvectors * inverse[None, :]) @ ops.transpose(eigenvectors)
    return ops.where(finite, pinv, float("nan"))
