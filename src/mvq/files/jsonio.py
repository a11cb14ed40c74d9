"""JSON read from files mvq did not necessarily write (checkpoint configs, manifests, token and
code headers): malformed text, deep nesting or the wrong top-level type is one `MvqError`."""

from __future__ import annotations

import json

from mvq.errors import MvqError


def loads_object(text: str | bytes, where: str, fix: str) -> dict:
    """The JSON object in ``text``; MvqError naming ``where`` (what was read) and ``fix`` (what
    to do) when it is not valid JSON, nests deeper than Python can parse, or is not an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise MvqError(f"{where} is not valid JSON ({err.msg} at line {err.lineno}); "
                       f"{fix}") from None
    except UnicodeDecodeError:
        raise MvqError(f"{where} is not UTF-8 text; {fix}") from None
    except RecursionError:
        raise MvqError(f"{where} nests JSON too deeply to be mvq's; {fix}") from None
    if not isinstance(value, dict):
        raise MvqError(f"{where} holds a JSON {type(value).__name__}, expected an object; {fix}")
    return value
