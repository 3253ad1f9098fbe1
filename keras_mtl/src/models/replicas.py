"""How a training step sees the other replicas of a data-parallel run.

A data-parallel step runs once per replica, each on its shard of the global
batch. The backend engines describe the run to the `Balancer` with an object
that has:

- `count`: the number of replicas (a Python int);
- `sum(values)`: the element-wise sum of a list of tensors over all
  replicas (an all-reduce), the same list on every replica.

`SINGLE` is the one-replica case: one device, and also JAX under
`keras.distribution`, whose step is one SPMD program over the global batch.
"""


class SingleReplica:
    """One replica: nothing to reduce."""

    count = 1

    def sum(self, values):
        return values


SINGLE = SingleReplica()
