"""Errors a user can act on. The CLI prints these as one line and exits non-zero."""


class MvqError(Exception):
    """A user-facing error: the message says what was expected, what was found, what to do."""


def expect_value(value, cls: type, name: str):
    """``value`` itself, or ``cls()`` for None; MvqError naming ``name`` when it is neither
    None nor a ``cls`` (a settings value passed as a dict, say)."""
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise MvqError(f"{name} must be an {cls.__module__}.{cls.__name__} (or None for its "
                       f"defaults), found {type(value).__name__}; build one, e.g. "
                       f"{cls.__name__}(...)")
    return value
