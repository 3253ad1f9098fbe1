"""Float64 solutions of each balancing rule's defining problem.

Written independently of `keras_mtl`'s solvers: quadratic programmes over the
simplex or a box are solved with SciPy's NNLS (Lawson-Hanson active set, exact
up to rounding), fixed points with SciPy's root finder, spectral rules from a
float64 SVD of the Jacobian itself (never from its squared Gramian). Each
function takes a float64 `(T, P)` Jacobian and returns the `(P,)` direction.
"""

import numpy as np
from scipy import optimize


def _nnls(matrix, target):
    solution, _ = optimize.nnls(matrix, target, maxiter=50 * matrix.shape[1])
    return solution


def min_norm_point(points):
    """`argmin_{w in simplex} ||w @ points||` by NNLS.

    `min_{u >= 0} ||points^T u||^2 + (1^T u - 1)^2` is minimised by a
    positive multiple of the simplex solution.
    """
    num = points.shape[0]
    matrix = np.vstack([points.T, np.ones((1, num))])
    target = np.zeros(matrix.shape[0])
    target[-1] = 1.0
    u = _nnls(matrix, target)
    return u / u.sum()


def mgda(jacobian):
    return min_norm_point(jacobian) @ jacobian


def dual_cone_weights(jacobian, lower, reg_eps=1e-4, norm_eps=1e-4):
    """`argmin_{v >= lower} v^T (G / tr G + reg I) v` (UPGrad, DualProj).

    With `A = [J / sqrt(tr G); sqrt(reg) I]`, `v = lower + z` where `z >= 0`
    minimises `||A z + A lower||`: an NNLS problem.
    """
    num = jacobian.shape[0]
    trace = np.sum(jacobian**2)
    scaled = jacobian / np.sqrt(trace) if trace >= norm_eps else 0 * jacobian
    matrix = np.hstack([scaled, np.sqrt(reg_eps) * np.eye(num)]).T
    return lower + _nnls(matrix, -matrix @ lower)


def upgrad(jacobian):
    num = jacobian.shape[0]
    weights = np.mean(
        [dual_cone_weights(jacobian, row) for row in np.eye(num)], axis=0)
    return weights @ jacobian


def dualproj(jacobian):
    num = jacobian.shape[0]
    return dual_cone_weights(jacobian, np.full(num, 1.0 / num)) @ jacobian


def unit_rows(jacobian):
    norms = np.linalg.norm(jacobian, axis=1)
    return jacobian / norms[:, None], norms


def imtl_g(jacobian):
    """Equal projections `u_i . d` with `d = sum_i w_i g_i`, `sum w = 1`."""
    units, norms = unit_rows(jacobian)
    # d = units^T z with units @ d = 1: the least-squares z of that system.
    z = np.linalg.lstsq(units @ units.T, np.ones(len(norms)), rcond=None)[0]
    weights = z / norms
    return weights @ jacobian / weights.sum()


def config(jacobian):
    units, _ = unit_rows(jacobian)
    # The least-norm d with equal cosine 1 to every task.
    direction = np.linalg.lstsq(units, np.ones(len(units)), rcond=None)[0]
    direction /= np.linalg.norm(direction)
    return np.sum(jacobian @ direction) * direction


def aligned_mtl(jacobian):
    """`sigma_min * W U^T 1 / T` from the SVD `J = U diag(s) W^T`."""
    left, singular, right_t = np.linalg.svd(jacobian, full_matrices=False)
    num = jacobian.shape[0]
    return singular.min() * right_t.T @ left.T @ np.full(num, 1.0 / num)


def cagrad(jacobian, c=0.5):
    """`g0 + c ||g0|| g_w / ||g_w||` for the dual minimiser `w`."""
    mean = jacobian.mean(axis=0)
    combo = cagrad_dual_weights(jacobian, c) @ jacobian
    return mean + c * np.linalg.norm(mean) * combo / np.linalg.norm(combo)


def cagrad_dual_weights(jacobian, c=0.5):
    """The dual is `min_{w in simplex} g_w . g0 + r ||g_w||`, `r = c ||g0||`.
    With `||g_w|| = min_t t / 2 + ||g_w||^2 / (2 t)`, a fixed `t` leaves the
    minimum-norm point of the shifted gradients `g_i + (t / r) g0` (NNLS);
    the optimal `t` is the root of `log t - log ||g_w(t)||` (SciPy's
    `brentq`, bracketed by the smallest hull norm and the largest gradient
    norm). Minimising the dual value itself over `t` is less accurate: it is
    flat at the optimum.
    """
    mean = jacobian.mean(axis=0)
    radius = c * np.linalg.norm(mean)

    def dual_weights(log_t):
        return min_norm_point(jacobian + np.exp(log_t) / radius * mean)

    def optimality(log_t):
        return log_t - np.log(np.linalg.norm(dual_weights(log_t) @ jacobian))

    low = np.log(np.linalg.norm(mgda(jacobian)))
    high = np.log(np.linalg.norm(jacobian, axis=1).max())
    log_t = optimize.brentq(optimality, low, high, xtol=1e-14, rtol=1e-15)
    return dual_weights(log_t)


def cagrad_dual_value(jacobian, weights, c=0.5):
    """The dual objective at `weights`, to check `cagrad` independently."""
    mean = jacobian.mean(axis=0)
    combo = weights @ jacobian
    return combo @ mean + c * np.linalg.norm(mean) * np.linalg.norm(combo)


def fair_weights(jacobian, alpha):
    """The positive root of `G w = w^(-1/alpha)` (Nash-MTL: alpha = 1).

    In `z = ||g_i|| w_i` the equation reads `C z = z^(-1/a) n^(1/a - 1)`
    with the cosine matrix `C`; solved on `log z` by SciPy's hybrid method.
    """
    units, norms = unit_rows(jacobian)
    cosines = units @ units.T
    right = norms ** (1.0 / alpha - 1.0)

    def equations(log_z):
        z = np.exp(log_z)
        return cosines @ z - z ** (-1.0 / alpha) * right

    solution = optimize.root(equations, np.zeros(len(norms)), method="hybr",
                             options={"xtol": 1e-14})
    z = np.exp(solution.x)
    residual = np.max(np.abs(equations(solution.x)) / (cosines @ z))
    assert residual < 1e-9, residual
    return z / norms


def nash_mtl(jacobian):
    return fair_weights(jacobian, 1.0) @ jacobian


def fairgrad(jacobian, alpha=1.0):
    return fair_weights(jacobian, alpha) @ jacobian


def pcgrad_in_order(jacobian):
    """PCGrad with each task visiting the others in index order."""
    total = np.zeros(jacobian.shape[1])
    for i, row in enumerate(jacobian):
        projected = row.copy()
        for j, other in enumerate(jacobian):
            dot = projected @ other
            if j != i and dot < 0:
                projected -= dot / (other @ other) * other
        total += projected
    return total


def pcd(jacobian, tau=0.02, eps=1e-8):
    """First step of PCD (the moving average is then `||g||^2`): the dual
    `min_{mu >= 0} 1/2 ||g~_0 + sum_j mu_j g~_j||^2 - tau sum_j mu_j
    ||g~_j||^2` by NNLS after completing the square, rescaled to `||g_0||`.
    """
    scaled = jacobian / np.sqrt(np.sum(jacobian**2, axis=1) + eps)[:, None]
    others = scaled[1:].T
    gram = others.T @ others
    linear = others.T @ scaled[0] - tau * np.diag(gram)
    factor = np.linalg.cholesky(gram)
    mu = _nnls(factor.T, -np.linalg.solve(factor, linear))
    direction = scaled[0] + mu @ scaled[1:]
    return direction * np.linalg.norm(jacobian[0]) / np.linalg.norm(direction)


def krum(jacobian, n_byzantine=1, n_selected=2):
    num = len(jacobian)
    distances = np.sum((jacobian[:, None] - jacobian[None]) ** 2, axis=-1)
    scores = np.sort(distances, axis=1)[:, 1:num - n_byzantine - 1].sum(1)
    return jacobian[np.argsort(scores)[:n_selected]].mean(axis=0)


def trimmed_mean(jacobian, trim_number=1):
    num = len(jacobian)
    return np.sort(jacobian, axis=0)[trim_number:num - trim_number].mean(0)


def mean(jacobian):
    return jacobian.mean(axis=0)


def total(jacobian):
    return jacobian.sum(axis=0)


def cosine(a, b):
    a = np.asarray(a, "float64")
    b = np.asarray(b, "float64")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def graded_jacobian(num_tasks, num_params=40, low=-3.0, high=3.0,
                    conflicting=False, seed=0):
    """Float32 Jacobian whose row norms are `logspace(low, high, T)`
    (shuffled); `conflicting` makes the rows' pairwise cosines negative."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((num_tasks, num_params))
    if conflicting:
        rows -= 0.9 * rows.mean(axis=0)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    norms = rng.permutation(np.logspace(low, high, num_tasks))
    return (rows * norms[:, None]).astype("float32")


def simplex_projection(v):
    """Euclidean projection onto the simplex: `max(v - theta, 0)` with
    `theta` the root of `sum(max(v - theta, 0)) = 1` (Brent's method)."""
    excess = lambda theta: np.maximum(v - theta, 0.0).sum() - 1.0  # noqa
    theta = optimize.brentq(excess, v.min() - 1.0, v.max(), xtol=1e-15,
                            rtol=1e-15)
    return np.maximum(v - theta, 0.0)


def modo_weights(cross, weights, gamma=0.1, rho=0.1):
    """One MoDo step on the task weights, for the cross-batch matrix
    `cross = J_1 J_2^T`."""
    return simplex_projection(weights - gamma * (cross @ weights
                                                 + rho * weights))


def sdmgrad_weights(cross, weights, lr=10.0, momentum=0.5, iterations=20,
                    direction_weight=0.3, preference=None):
    """SDMGrad's inner loop: `(new weights, direction weights)`."""
    num = len(weights)
    preference = (np.full(num, 1.0 / num) if preference is None
                  else np.asarray(preference, "float64"))
    scale = np.mean(np.sqrt(np.maximum(np.diag(cross), 0.0)))
    cross = cross / (scale**2 + 1e-8)
    velocity = np.zeros(num)
    for _ in range(iterations):
        velocity = momentum * velocity + cross @ (
            weights + direction_weight * preference)
        weights = simplex_projection(weights - lr * velocity)
    return weights, (weights + direction_weight * preference) / (
        1.0 + direction_weight)


def softmax(alpha):
    e = np.exp(alpha - np.max(alpha))
    return e / e.sum()


def adam(alpha, gradient, m, v, step, lr, beta_1=0.9, beta_2=0.999,
         eps=1e-8):
    """One PyTorch-style Adam step; returns `(alpha, m, v, step)`."""
    step = step + 1
    m = beta_1 * m + (1 - beta_1) * gradient
    v = beta_2 * v + (1 - beta_2) * gradient ** 2
    m_hat, v_hat = m / (1 - beta_1 ** step), v / (1 - beta_2 ** step)
    return alpha - lr * m_hat / (np.sqrt(v_hat) + eps), m, v, step


def auto_lambda_hypergradient(losses, gradient, theta, alpha, eta,
                              outer=None):
    """LibMTL's Auto-Lambda hypergradient of `alpha`.

    `losses(theta)` gives the `(2T,)` part-major row losses and
    `gradient(theta, c)` the gradient of `c @ rows`.
    """
    w = softmax(alpha)
    num_tasks = len(alpha)
    outer = np.ones(num_tasks) if outer is None else outer
    zeros = np.zeros(num_tasks)
    virtual = theta - eta * gradient(theta, np.concatenate([w, zeros]))
    v = gradient(virtual, np.concatenate([zeros, outer]))
    eps = 0.01 / np.linalg.norm(v)
    plus = losses(theta + eps * v)[:num_tasks]
    minus = losses(theta - eps * v)[:num_tasks]
    d = (plus - minus) / (2 * eps)
    jacobian = np.diag(w) - np.outer(w, w)
    return -eta * jacobian.T @ d


def moml_hypergradient(gradient, theta, alpha, inner_lr):
    """LibMTL's MOML hypergradient: per-task hypergradients, unit-scaled,
    combined by their minimum-norm point (an NNLS solve)."""
    w = softmax(alpha)
    num_tasks = len(alpha)
    eye = np.eye(num_tasks)
    zeros = np.zeros((num_tasks, num_tasks))
    inner = np.stack([gradient(theta, c)
                      for c in np.concatenate([eye, zeros], axis=1)])
    virtual = theta - inner_lr * w @ inner
    outer = np.stack([gradient(virtual, c)
                      for c in np.concatenate([zeros, eye], axis=1)])
    jacobian = np.diag(w) - np.outer(w, w)
    per_task = -inner_lr * outer @ inner.T @ jacobian
    per_task = per_task / np.linalg.norm(per_task, axis=1, keepdims=True)
    return min_norm_point(per_task) @ per_task


def forum_programme(cosines, qg, qq, pi, phi):
    """FORUM's programme in its original `(T + 1)`-variable form, as LibMTL
    states it for cvxpy: `min x^T M x - x_q phi ||g_q||^2` with
    `M = [[C, <g_t, g_q>], [., ||g_q||^2]]`, `x_{:T}` on the simplex,
    `x_q >= pi . x_{:T}` and `x_q >= 0` (SLSQP from several starts)."""
    num = len(qg)
    matrix = np.block([[cosines, qg[:, None]], [qg[None, :], np.array([[qq]])]])
    linear = np.zeros(num + 1)
    linear[-1] = -phi * qq
    # SLSQP needs a well-scaled objective: ||g_q||^2 may be 1e6.
    size = max(np.abs(matrix).max(), 1.0)
    matrix, linear = matrix / size, linear / size
    constraints = [
        {"type": "eq", "fun": lambda x: x[:num].sum() - 1.0,
         "jac": lambda x: np.r_[np.ones(num), 0.0]},
        {"type": "ineq", "fun": lambda x: x[-1] - pi @ x[:num],
         "jac": lambda x: np.r_[-pi, 1.0]},
    ]
    rng = np.random.default_rng(0)
    best = None
    starts = [np.r_[np.eye(num)[k], max(pi[k], 0.0)] for k in range(num)]
    starts += [np.r_[rng.dirichlet(np.ones(num)), 1.0] for _ in range(4)]
    for start in starts:
        found = optimize.minimize(
            lambda x: x @ matrix @ x + linear @ x, start,
            jac=lambda x: 2 * matrix @ x + linear,
            bounds=[(0, None)] * (num + 1), constraints=constraints,
            method="SLSQP", options={"ftol": 1e-16, "maxiter": 2000})
        if best is None or found.fun < best.fun:
            best = found
    return best.x[:num]


def forum(jacobian, inner_decrease, alpha, phi=0.1, epoch=0, lambdas=None):
    """LibMTL's FORUM update from a part-major `(2T, P)` Jacobian: returns
    `(direction, alpha_gradient, lambdas)`."""
    num = len(alpha)
    w = softmax(alpha)
    outer = jacobian[num:]
    unit = outer / np.linalg.norm(outer, axis=1, keepdims=True)
    alpha_part = (np.diag(w) - np.outer(w, w)) @ inner_decrease
    omega_part = w @ jacobian[:num]
    qq = omega_part @ omega_part + alpha_part @ alpha_part + 1e-8
    qg = unit @ omega_part
    pi = phi - qg / qq
    x = forum_programme(unit @ unit.T, qg, qq, pi, phi)
    lambdas = np.zeros(num) if lambdas is None else lambdas
    lambdas = lambdas + (epoch + 1) ** -0.75 * (x - lambdas)
    nu = max(lambdas @ pi, 0.0)
    return lambdas @ unit + nu * omega_part, nu * alpha_part, lambdas


def simplex_qp(quadratic, linear, plane=None):
    """`argmin 1/2 w^T Q w + l^T w` over the simplex (and `plane . w = 0`):
    the best SLSQP solution from every vertex or crossing and random
    starts."""
    num = len(linear)
    constraints = [{"type": "eq", "fun": lambda w: w.sum() - 1.0}]
    if plane is not None:
        constraints.append({"type": "eq", "fun": lambda w: plane @ w})
    rng = np.random.default_rng(0)
    starts = [rng.dirichlet(np.ones(num)) for _ in range(6)]
    starts += list(np.eye(num))
    best = None
    for start in starts:
        found = optimize.minimize(
            lambda w: 0.5 * w @ quadratic @ w + linear @ w, start,
            jac=lambda w: quadratic @ w + linear, bounds=[(0, None)] * num,
            constraints=constraints, method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000})
        feasible = plane is None or abs(plane @ found.x) < 1e-9
        if feasible and (best is None or found.fun < best.fun):
            best = found
    return best.x, best.fun
