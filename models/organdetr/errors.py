"""Exceptions that carry a message meant for the user (bad input, bad usage) rather than a bug.

``UserInputError`` is the torch-free client's (:mod:`organdetr_client.errors`): one class for client, backend and model.
"""

from organdetr_client.errors import UserInputError as UserInputError


class NotAPatientCTError(UserInputError):
    """A readable image that is not a CT of a person (all NaN, constant, no voxel in the body's HU range)."""

    http_status = 422
    code = "not_a_ct"
