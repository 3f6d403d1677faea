"""Errors the user can fix: they carry an exit code in the contract's user range (1-127), so nobody retries."""

from __future__ import annotations

from .api.contract import EXIT_BAD_DATA, EXIT_UNSUPPORTED_MODEL, EXIT_USER_ERROR


class UserError(Exception):
    """A problem in the spec, the data or the model that a restart cannot fix; the message says what to fix."""

    exit_code = EXIT_USER_ERROR


class DataError(UserError):
    """Bad training or evaluation data; the message names the file and the line (or row, or image)."""

    exit_code = EXIT_BAD_DATA


class ModelError(UserError):
    """A backbone that cannot be loaded or is not supported by the chosen method."""

    exit_code = EXIT_UNSUPPORTED_MODEL
