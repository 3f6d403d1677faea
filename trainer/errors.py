"""Errors the user can fix: each type carries its exit code in the contract's user range (1-127), so nobody
retries them. The type decides the code, as kopf's PermanentError decides that a handler is not retried:
whoever raises one chooses the type for who must act, and the message names the field (or file) and the reason.

Anything that is not a UserError is infrastructure (exit 200, the gang is restarted).
"""

from __future__ import annotations

from .api.contract import EXIT_BAD_DATA, EXIT_INVALID_SPEC, EXIT_OUTPUT, EXIT_UNSUPPORTED_MODEL, EXIT_USER_ERROR


class UserError(Exception):
    """A problem that a restart cannot fix; the message says what to fix."""

    exit_code = EXIT_USER_ERROR


class SpecError(UserError, ValueError):
    """A spec that passed validation but cannot run: with this model (maxLength over its positions), on this
    machine (fp16 without support, GPUs asked for and absent), or with values only the trainer can judge.
    A ValueError too, as pydantic's own refusals are, so callers that catch bad values keep working."""

    exit_code = EXIT_INVALID_SPEC


class DataError(UserError):
    """Bad training or evaluation data; the message names the file and the line (or row, or image)."""

    exit_code = EXIT_BAD_DATA


class ModelError(UserError):
    """A backbone that is missing, cannot be loaded, lacks what the task needs (a tokenizer, an image
    processor) or is not supported by the chosen task or method."""

    exit_code = EXIT_UNSUPPORTED_MODEL


class OutputError(UserError):
    """Output or storage configuration: an unwritable folder, a missing bucket, refused or absent credentials."""

    exit_code = EXIT_OUTPUT
