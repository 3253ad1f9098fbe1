"""The decorator that makes a symbol public and serialisable."""

import keras

PUBLIC_SYMBOLS = {}


def keras_mtl_export(path):
    """Registers `symbol` under its public `path` and for `.keras` saving.

    Classes with a `get_config` are registered with
    `keras.saving.register_keras_serializable` in the `keras_mtl` package,
    so saved models find them again on load (mixins have no config).
    """

    def decorator(symbol):
        if isinstance(symbol, type) and hasattr(symbol, "get_config"):
            symbol = keras.saving.register_keras_serializable(
                package="keras_mtl", name=symbol.__name__
            )(symbol)
        PUBLIC_SYMBOLS[path] = symbol
        return symbol

    return decorator
