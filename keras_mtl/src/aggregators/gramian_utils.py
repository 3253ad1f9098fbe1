"""Small linear-algebra helpers on `(T, T)` Gramians, in `keras.ops`."""

from keras import ops


def normalize_gramian(gramian, eps=1e-4):
    """`G / trace(G)`: the Gramian of the Frobenius-normalised Jacobian.

    Returns zeros when `trace(G) < eps` (all gradients are tiny), as TorchJD.
    """
    trace = ops.trace(gramian)
    return ops.where(trace < eps, 0.0, gramian / ops.where(trace < eps, 1.0, trace))


def regularize_gramian(gramian, eps=1e-4):
    """`G + eps I`, which makes the Gramian positive definite."""
    return gramian + eps * ops.eye(gramian.shape[0], dtype=gramian.dtype)


def psd_pinv(matrix, rtol=1e-6):
    """Moore-Penrose pseudo-inverse of a symmetric PSD matrix (via `eigh`).

    Eigenvalues below `rtol * max_eigenvalue` are treated as 0.
    """
    eigenvalues, eigenvectors = ops.eigh(matrix)
    cutoff = rtol * ops.max(ops.abs(eigenvalues))
    keep = eigenvalues > ops.maximum(cutoff, 1e-30)
    inverse = ops.where(keep, 1.0 / ops.where(keep, eigenvalues, 1.0), 0.0)
    return (eigenvectors * inverse[None, :]) @ ops.transpose(eigenvectors)


def project_onto_simplex(v):
    """Euclidean projection of each row of `v` onto the probability simplex."""
    num = v.shape[-1]
    u = ops.flip(ops.sort(v, axis=-1), axis=-1)
    cumulative = ops.cumsum(u, axis=-1) - 1.0
    index = ops.arange(1, num + 1, dtype=v.dtype)
    positive = u - cumulative / index > 0
    rho = ops.sum(ops.cast(positive, v.dtype), axis=-1, keepdims=True)
    theta = ops.take_along_axis(
        cumulative, ops.cast(rho, "int32") - 1, axis=-1
    ) / rho
    return ops.maximum(v - theta, 0.0)
