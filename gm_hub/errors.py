"""The one error type users see as a single line: a bad flag, config, file or dataset, and what to change."""


class UserError(ValueError):
    """Bad input from the user (flag, config, folder, dataset); the message says what to change."""
