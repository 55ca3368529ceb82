"""Exceptions that carry a message meant for the user (bad input, bad usage) rather than a bug."""


class UserInputError(ValueError):
    """Input the user can fix: unreadable or implausible images, bad JSON, unknown organs, bad options.

    The CLI turns it into one line on stderr and exit code 2; the server into a 4xx JSON answer.
    """

    http_status = 400
    code = "bad_input"  # the service's error code
