"""Errors a user can act on. The CLI prints these as one line and exits non-zero."""


class MvqError(Exception):
    """A user-facing error: the message says what was expected, what was found, what to do."""
