"""One Adam step on a small tensor of rule parameters, in `keras.ops`."""

from keras import ops


def adam_step(params, gradient, m, v, step, learning_rate, beta_1=0.9,
              beta_2=0.999, epsilon=1e-8):
    """Returns `(new_params, m, v, step)` after one bias-corrected Adam step.

    `m` and `v` are the moment estimates and `step` the number of steps
    taken so far (0 before the first); all start at zero.
    """
    step = step + 1.0
    m = beta_1 * m + (1.0 - beta_1) * gradient
    v = beta_2 * v + (1.0 - beta_2) * gradient * gradient
    m_hat = m / (1.0 - ops.power(beta_1, step))
    v_hat = v / (1.0 - ops.power(beta_2, step))
    new_params = params - learning_rate * m_hat / (ops.sqrt(v_hat) + epsilon)
    return new_params, m, v, step
