"""Errors for user mistakes, at the bottom of the import graph (every module may import this one)."""


class UserError(ValueError):
    """A mistake in what the user asked for: a bad option, value, file or combination.

    The command line prints it as one line (exit status 2); anything else is a bug and keeps its traceback.
    It subclasses ValueError so callers catching ValueError keep working.
    """


__all__ = ["UserError"]
