"""Eigendecomposition of a graded positive semi-definite matrix, in-graph.

`ops.eigh` (QR-type LAPACK routines) computes every eigenvalue with an error
of about `eps * max eigenvalue`: on a float32 Gramian of task gradients whose
norms span 1e-3 to 1e3 the small eigenvalues, and their eigenvectors, are
lost. Jacobi's method keeps them: for `G = N C N` with `N` diagonal it finds
every eigenvalue with a relative error of about `eps * cond(C)`, whatever the
scales in `N` (Demmel & Veselic, "Jacobi's method is more accurate than QR",
SIAM J. Matrix Anal. Appl. 13, 1992).

This is the parallel cyclic variant: each round rotates `ceil(T / 2)`
disjoint pairs `(p, q)` at once (a round-robin tournament, so a sweep of
`T - 1` rounds visits every pair), each rotation zeroing its `G_pq`. It stops
when every off-diagonal entry is below `tolerance * sqrt(G_pp G_qq)` or after
`max_sweeps` sweeps; the loop is an `ops.while_loop` of `(T, T)` products.
"""

from keras import ops

from keras_mtl.src.backend import traceable_ops


def _tournament(size):
    """`(size - 1, size)` orders; round `k` pairs `order[k][2i]` with
    `order[k][2i + 1]`, and every pair meets once (the circle method)."""
    others = list(range(1, size))
    rounds = []
    for _ in range(size - 1):
        players = [0] + others
        rounds.append([players[i] for i in _interleave(size)])
        others = others[-1:] + others[:-1]
    return rounds


def _interleave(size):
    # Player i meets player size - 1 - i.
    half = size // 2
    order = []
    for i in range(half):
        order += [i, size - 1 - i]
    return order


def jacobi_eigh(matrix, max_sweeps=12, tolerance=1e-7):
    """Returns `(eigenvalues, eigenvectors, off_diagonal)` of `matrix`.

    Args:
        matrix: `(T, T)` symmetric positive semi-definite matrix.
        max_sweeps: maximum number of sweeps (each `T - 1` rounds); float32
            converges in 4 to 8.
        tolerance: relative size of the off-diagonal entries at which to
            stop.

    Returns:
        Eigenvalues in ascending order, the matching eigenvectors as
        columns, and the largest remaining relative off-diagonal entry
        `|G_pq| / sqrt(G_pp G_qq)` (the solver's residual).
    """
    num = matrix.shape[0]
    size = num + num % 2  # An odd size gets a decoupled zero row.
    a = ops.cast(matrix, "float32")
    if size != num:
        # Not `ops.pad`: it builds a Keras `Operation` at every call, which
        # `torch.compile` cannot trace inside a conditional.
        a = ops.concatenate([a, ops.zeros((num, 1))], axis=1)
        a = ops.concatenate([a, ops.zeros((1, size))], axis=0)
    orders = ops.convert_to_tensor(_tournament(size), "int32")
    rounds = size - 1
    # Python lists, not NumPy: `torch.compile` traces no NumPy inside a
    # conditional.
    first = ops.convert_to_tensor([1.0 - i % 2 for i in range(size)])
    above = ops.eye(size, k=1) * first[:, None]  # (2i, 2i + 1) entries
    eye = ops.eye(size)
    off_mask = 1.0 - eye

    def off_diagonal(a):
        diag = ops.relu(ops.diagonal(a))
        scale = ops.sqrt(diag[:, None] * diag[None, :])
        ratio = ops.divide_no_nan(abs(a), scale)
        # Entries between a zero and a non-zero diagonal cannot exist in a
        # PSD matrix except by rounding; compare those to the matrix scale.
        tiny = abs(a) > 1e-30 * ops.amax(diag)
        ratio = ops.where((scale > 0.0) | ~tiny, ratio, 1.0)
        return ops.amax(ratio * off_mask)

    def body(step, a, vectors, residual):
        order = ops.take(orders, ops.mod(step, rounds), axis=0)
        perm = ops.one_hot(order, size)  # perm @ a reorders the rows.
        pa = perm @ a @ ops.transpose(perm)
        diag = ops.diagonal(pa)
        pairs = ops.reshape(diag, (size // 2, 2))
        a_pp, a_qq = pairs[:, 0], pairs[:, 1]
        a_pq = ops.reshape(ops.sum(pa * above, axis=1), (size // 2, 2))[:, 0]
        rotate = abs(a_pq) > 0.0
        tau = (a_qq - a_pp) / (2.0 * ops.where(rotate, a_pq, 1.0))
        t = ops.sign(tau) / (
            abs(tau) + ops.sqrt(1.0 + ops.minimum(tau * tau, 1e30)))
        t = ops.where(tau == 0.0, 1.0, t)
        t = ops.where(rotate, t, 0.0)
        c = 1.0 / ops.sqrt(1.0 + t * t)
        s = t * c
        cosines = ops.reshape(ops.stack([c, c], axis=1), (size,))
        sines = ops.reshape(ops.stack([s, s], axis=1), (size,)) * first
        shear = above * sines[:, None]
        rotation = eye * cosines[None, :] + shear - ops.transpose(shear)
        q = ops.transpose(perm) @ rotation @ perm
        a = ops.transpose(q) @ a @ q
        a = 0.5 * (a + ops.transpose(a))
        return step + 1, a, vectors @ q, off_diagonal(a)

    def cond(step, a, vectors, residual):
        return (step < max_sweeps * rounds) & (residual > tolerance)

    _, a, vectors, residual = traceable_ops.while_loop(
        cond, body,
        (ops.convert_to_tensor(0, "int32"), a, eye, off_diagonal(a)))
    eigenvalues = ops.diagonal(a)[:num]
    vectors = vectors[:num, :num]
    order = ops.argsort(eigenvalues)
    return (ops.take(eigenvalues, order),
            ops.take(vectors, order, axis=1), residual)


def accurate_eigh(matrix, max_condition=1e3):
    """`ops.eigh` where it is accurate, `jacobi_eigh` where it is not.

    `eigh`'s eigenvalues have errors of about `eps * max eigenvalue`, so they
    keep 4 digits when the condition number is below `max_condition`; only
    worse-conditioned matrices pay for Jacobi's sweeps (`ops.cond` runs one
    branch). Returns `(eigenvalues, eigenvectors, residual)` as
    `jacobi_eigh`, with residual 0 on the `eigh` branch.
    """
    matrix = ops.cast(matrix, "float32")
    eigenvalues, vectors = ops.eigh(matrix)
    well_conditioned = eigenvalues[0] * max_condition >= eigenvalues[-1]
    well_conditioned = well_conditioned & (eigenvalues[0] > 0.0)
    return traceable_ops.cond(
        well_conditioned,
        lambda: (eigenvalues, vectors, ops.zeros(())),
        lambda: jacobi_eigh(matrix))
