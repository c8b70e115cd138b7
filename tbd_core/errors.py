"""Errors every stage shares. The CLI prints a `UserError` as one line (exit status 2), no traceback."""


class UserError(Exception):
    """Bad input or a missing prerequisite the user can fix; the message names the input and the fix."""
