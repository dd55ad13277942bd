"""The one error type of the review package family (tasks, app, agreement)."""


class ReviewError(Exception):
    """Bad review input or state; the message names the file, line or field and what was expected."""
