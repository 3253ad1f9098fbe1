"""Paths of sub-layers and variables inside a model (private).

A path joins layer names from the model (excluded) down to a layer, so two
models built from the same config (`from_config`, `clone_model`, a loaded
`.keras` file) give their corresponding layers and variables equal paths.
"""

from keras_mtl.src.utils.layer_internals import sublayers


def children(layer):
    """The direct sub-layers of `layer`."""
    return sublayers(layer, recursive=False)


def walk(model):
    """`(path, layer)` for every sub-layer of `model`, depth first, once.

    A layer reached twice keeps its first path.
    """
    seen = {id(model)}
    found = []

    def visit(layer, prefix):
        for child in children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = prefix + child.name
            found.append((path, child))
            visit(child, path + "/")

    visit(model, "")
    return found


def variable_keys(model):
    """`(key, variable)` for the sub-layers' weights, in `weights` order.

    A key is the path of the layer that owns the variable, then the
    variable's name (`#1`, `#2`, ... are appended to repeated keys). The
    model's own variables (e.g. optimizer or aggregator state) are left out.
    """
    keys = {}
    for path, layer in walk(model):
        inner = {id(v) for child in children(layer) for v in child.weights}
        for variable in layer.weights:
            if id(variable) not in inner:
                keys.setdefault(id(variable), f"{path}/{variable.name}")
    counts = {}
    ordered = []
    for variable in model.weights:
        key = keys.get(id(variable))
        if key is None:
            continue
        count = counts.get(key, 0)
        counts[key] = count + 1
        ordered.append((f"{key}#{count}" if count else key, variable))
    return ordered
