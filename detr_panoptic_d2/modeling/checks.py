"""Argument checks of the model's components, shared by both config worlds: a bad value is a
``ValueError`` naming the YAML key and the component's argument it sets (a LazyConfig override sets
the argument; a YAML config, the key)."""


def check_arg(ok, component, arg, key, value, what):
    """Raise ``ValueError("<key> (<component>'s <arg>) must be <what>, got <value>")`` unless
    ``ok``."""
    if not ok:
        raise ValueError(f"{key} ({component}'s {arg}) must be {what}, got {value!r}")


def check_int(component, arg, key, value, minimum):
    """``value`` is an int (not a bool) >= ``minimum``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    check_arg(ok, component, arg, key, value, f"an integer >= {minimum}")
