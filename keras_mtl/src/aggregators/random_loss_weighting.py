from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import seed_from
from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.backend import traceable_ops


@keras_mtl_export("keras_mtl.aggregators.RandomLossWeighting")
class RandomLossWeighting(Weighting):
    """Random loss weighting (RLW).

    At every step `w = softmax(e)` with `e ~ N(0, I)` (weights sum to 1, as
    LibMTL and TorchJD's `Random`). A strong, free baseline. Cost: loss-only.
    Randomised; reproducible with a seeded `keras.random.SeedGenerator`.

    Example:

    >>> agg = keras_mtl.aggregators.RandomLossWeighting()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus
        Test for Multi-Task Learning", TMLR 2022.
    """

    requires_jacobian = False

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        noise = traceable_ops.normal((num_tasks,), seed=seed_from(seed))
        return softmax_over_tasks(noise), state
