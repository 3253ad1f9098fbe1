"""`while_loop`, `cond`, `solve` and random draws for the aggregators,
traceable by every backend's compiler.

Keras' own `ops.while_loop`, `ops.cond`, `ops.solve` and `keras.random`
serve JAX and TensorFlow, and eager PyTorch. Under `torch.compile` they do
not:

- Keras' PyTorch `while_loop` is a Python loop whose condition Dynamo
  cannot trace (a graph break at every iteration). While PyTorch compiles,
  `while_loop` is PyTorch's own `torch._higher_order_ops.while_loop`, which
  Dynamo captures in the graph, so a solver loop compiles to a loop in the
  kernel. It takes only tensors, whose shapes and dtypes the body keeps,
  and no tensor may be both an input and an output (aliasing): the loop
  variables start as contiguous copies, and a body output that is one of
  its inputs is copied too.
- Each `ops.cond` call builds a Keras `Operation` with a fresh name (a
  recompile at every step), and `torch.cond` with a loop inside a branch
  fails at run time in Inductor (torch 2.13). While PyTorch compiles,
  `cond` runs both branches and selects with `where`: the branches must be
  free of side effects (every solver's are), and the compiled step pays for
  both (small `(T, T)` work).
- `torch.linalg.solve` checks LAPACK's status on the host, which Inductor
  cannot compile inside a loop (torch 2.13). PyTorch's `solve` here is
  `torch.linalg.solve_ex`, without the check: a singular system gives
  non-finite entries instead of an exception (every solver tests its
  solution for finiteness).
- Keras draws PyTorch random numbers from a `torch.Generator` seeded on the
  host, which Dynamo refuses to trace. PyTorch's draws here come from a
  counter-based hash of the seed and the element's index (Wellons'
  `lowbias32`, applied three times), in integer tensor operations: the same
  numbers eager and compiled, on any device, and no host sync. A
  `SeedGenerator` advances as Keras' own draws advance it.
"""

import math

import keras

if keras.config.backend() == "torch":
    import torch
    from torch._higher_order_ops.while_loop import while_loop as _torch_while

    def _compiling():
        return torch.compiler.is_compiling()

    def solve(a, b):
        """`keras.ops.solve(a, b)`; non-finite where `a` is singular."""
        a = keras.ops.convert_to_tensor(a)
        b = keras.ops.convert_to_tensor(b)
        return torch.linalg.solve_ex(a, b)[0]

    def uniform(shape, minval=0.0, maxval=1.0, seed=None):
        """`keras.random.uniform(shape, minval, maxval, seed=seed)`, float32
        (`seed`: an int or a `keras.random.SeedGenerator`)."""
        unit = _unit_draws(math.prod(shape), seed)
        return torch.reshape(minval + (maxval - minval) * unit, shape)

    def normal(shape, seed=None):
        """`keras.random.normal(shape, seed=seed)`, float32 (Box-Muller)."""
        count = math.prod(shape)
        unit = _unit_draws(2 * count, seed)
        radius = torch.sqrt(-2.0 * torch.log1p(-unit[:count]))
        angle = (2.0 * math.pi) * unit[count:]
        return torch.reshape(radius * torch.cos(angle), shape)

    def _unit_draws(count, seed):
        """`count` float32 draws in [0, 1): 24 bits of a hash each."""
        key = _seed_key(seed)
        index = torch.arange(count, dtype=torch.int64, device=key.device)
        bits = _mix(_mix(index ^ key))
        return (bits >> 8).to(torch.float32) * 2.0 ** -24

    def _seed_key(seed):
        """One 32-bit key (an int64 tensor) for `seed`."""
        if isinstance(seed, keras.random.SeedGenerator):
            pair = seed.state.value
            # Keras' own `SeedGenerator.next()`, without a host-to-device
            # copy of the increment.
            seed.state.assign(torch.stack([pair[0], pair[1] + 1]))
        else:
            pair = keras.ops.convert_to_tensor([int(seed), 0])
        pair = pair.to(torch.int64) & 0xFFFFFFFF
        return _mix(_mix(pair[0] + 0x9E3779B9) ^ pair[1])

    def _mix(x):
        """Wellons' `lowbias32` of non-negative 32-bit values in int64."""
        x = x ^ (x >> 16)
        x = _times(x, 0x7FEB352D)
        x = x ^ (x >> 15)
        x = _times(x, 0x846CA68B)
        return x ^ (x >> 16)

    def _times(x, factor):
        """`x * factor mod 2^32` with no int64 product above 2^48."""
        low = x * (factor & 0xFFFF)
        high = ((x * (factor >> 16)) & 0xFFFF) << 16
        return (low + high) & 0xFFFFFFFF

else:

    def _compiling():
        return False

    def solve(a, b):
        """`keras.ops.solve(a, b)`; non-finite where `a` is singular."""
        return keras.ops.solve(a, b)

    def uniform(shape, minval=0.0, maxval=1.0, seed=None):
        """`keras.random.uniform(shape, minval, maxval, seed=seed)`."""
        return keras.random.uniform(shape, minval, maxval, seed=seed)

    def normal(shape, seed=None):
        """`keras.random.normal(shape, seed=seed)`."""
        return keras.random.normal(shape, seed=seed)


def while_loop(cond, body, loop_vars):
    """`keras.ops.while_loop(cond, body, loop_vars)` for a tuple of tensors
    `loop_vars`; bound the loop in `cond` (every solver counts its
    iterations)."""
    if not _compiling():
        return keras.ops.while_loop(cond, body, loop_vars)
    loop_vars = tuple(_copy(v) for v in loop_vars)

    def fresh_body(*values):
        return tuple(_unaliased(out, values) for out in body(*values))

    return tuple(_torch_while(cond, fresh_body, loop_vars))


def cond(pred, true_fn, false_fn):
    """`keras.ops.cond(pred, true_fn, false_fn)` for branches that return
    tensors (or tuples of tensors) of equal shapes and dtypes."""
    if not _compiling():
        return keras.ops.cond(pred, true_fn, false_fn)
    chosen = keras.tree.map_structure(
        lambda a, b: torch.where(pred, a, b), true_fn(), false_fn())
    return tuple(chosen) if isinstance(chosen, list) else chosen


def _unaliased(tensor, inputs):
    return _copy(tensor) if any(tensor is x for x in inputs) else tensor


def _copy(tensor):
    tensor = keras.ops.convert_to_tensor(tensor)
    return tensor.clone(memory_format=torch.contiguous_format)
