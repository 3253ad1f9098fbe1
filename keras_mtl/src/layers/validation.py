"""Argument checks shared by the layers, with the "Received: arg=value"
message template."""


def check_positive_int(value, arg_name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"`{arg_name}` must be an int >= {minimum}. Received: "
            f"{arg_name}={value!r}"
        )
    return value


def check_choice(value, arg_name, choices):
    if value not in choices:
        raise ValueError(
            f"`{arg_name}` must be one of {choices}. Received: "
            f"{arg_name}={value!r}"
        )
    return value
