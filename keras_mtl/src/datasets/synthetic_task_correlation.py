import numpy as np

from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.datasets.synthetic_task_correlation")
def synthetic_task_correlation(
    num_samples=10000,
    num_features=100,
    correlation=0.5,
    num_tasks=2,
    scale=1.0,
    num_sines=10,
    noise_std=0.1,
    alphas=None,
    betas=None,
    seed=0,
):
    """Regression tasks with a controlled correlation (MMoE paper recipe).

    Following Ma et al. (KDD 2018), draw orthonormal `u_1, u_2`, set
    `w_1 = c u_1` and `w_k = c (p u_1 + sqrt(1 - p^2) u_k)` for the other
    tasks, so that `cos(w_1, w_k) = p`; then for `x ~ N(0, I)`:

        y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k.

    The paper publishes neither `alpha`, `beta`, `c` nor `m`; the defaults
    are those of the google-research re-implementation: `c = 1`, `m = 10`,
    `alpha_i = i`, `beta_i = (i - 1)^2`. The paper's noise is `N(0, 0.01)`,
    i.e. `noise_std = 0.1`. Because of the sine terms, the Pearson
    correlation of the labels is a monotone function of `p`, not `p` itself.
    With more than two tasks every task is correlated with task 1 by `p`
    (and tasks `k, l > 1` by `p^2`).

    Args:
        num_samples: number of samples.
        num_features: input dimension `d` (>= `num_tasks`).
        correlation: cosine similarity `p` of the task weight vectors, in
            `[-1, 1]`.
        num_tasks: number of tasks (>= 2).
        scale: the constant `c`.
        num_sines: number of sine terms `m`.
        noise_std: standard deviation of the label noise.
        alphas, betas: optional sequences of length `num_sines`.
        seed: seed of the NumPy generator; the same seed gives the same data.

    Returns:
        `(x, y)`: `x` of shape `(num_samples, num_features)` and a dict
        `y = {"task_1": (num_samples, 1), ...}`, all float32.

    Example:

    >>> x, y = keras_mtl.datasets.synthetic_task_correlation(
    ...     num_samples=100, correlation=0.9)
    >>> sorted(y)
    ['task_1', 'task_2']
    """
    if not -1.0 <= float(correlation) <= 1.0:
        raise ValueError(
            "`correlation` must be in [-1, 1]. "
            f"Received: correlation={correlation}"
        )
    if int(num_tasks) < 2:
        raise ValueError(
            f"`num_tasks` must be >= 2. Received: num_tasks={num_tasks}"
        )
    if int(num_features) < int(num_tasks):
        raise ValueError(
            "`num_features` must be at least `num_tasks`. "
            f"Received: num_features={num_features}, num_tasks={num_tasks}"
        )
    if int(num_samples) < 1:
        raise ValueError(
            f"`num_samples` must be >= 1. Received: num_samples={num_samples}"
        )
    alphas = np.arange(1, num_sines + 1) if alphas is None else alphas
    betas = np.arange(num_sines) ** 2 if betas is None else betas
    alphas = np.asarray(alphas, "float64")
    betas = np.asarray(betas, "float64")
    if alphas.shape != (num_sines,) or betas.shape != (num_sines,):
        raise ValueError(
            "`alphas` and `betas` must have length `num_sines`. Received: "
            f"len(alphas)={alphas.size}, len(betas)={betas.size}, "
            f"num_sines={num_sines}"
        )
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((num_features, num_tasks)))
    u = basis.T  # (num_tasks, num_features), orthonormal rows.
    p = float(correlation)
    weights = [scale * u[0]] + [
        scale * (p * u[0] + np.sqrt(1.0 - p * p) * u[k])
        for k in range(1, num_tasks)
    ]
    weights = np.stack(weights)
    x = rng.standard_normal((num_samples, num_features))
    projections = x @ weights.T  # (num_samples, num_tasks)
    sines = np.sin(projections[..., None] * alphas + betas).sum(axis=-1)
    labels = projections + sines
    labels += rng.normal(0.0, noise_std, size=labels.shape)
    y = {
        f"task_{k + 1}": labels[:, k : k + 1].astype("float32")
        for k in range(num_tasks)
    }
    return x.astype("float32"), y
