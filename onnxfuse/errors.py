"""The onnxfuse error hierarchy.

Every error a user can cause is a :class:`UserError` (CLI exit code 2); a parity or
tolerance failure is a :class:`ParityError` (exit 1); anything else is an internal error
(exit 3). Messages name the offending value and the fix.
"""

from __future__ import annotations

__all__ = [
    "ExportError",
    "InvalidModelError",
    "KernelError",
    "ModelNotFoundError",
    "OnnxfuseError",
    "OutputError",
    "ParityError",
    "RewriteError",
    "UnsupportedError",
    "UserError",
    "first_line",
]


class OnnxfuseError(Exception):
    """Base of every error raised by onnxfuse. Unclassified ones are internal (exit 3)."""

    exit_code: int = 3


class UserError(OnnxfuseError):
    """A mistake in what the user asked for: bad name, path, flag or model (exit 2)."""

    exit_code = 2


class ModelNotFoundError(UserError):
    """A model name, folder or file that does not exist."""


class InvalidModelError(UserError):
    """A model file or checkpoint that exists but cannot be used."""


class OutputError(UserError):
    """An output path that cannot be written, or that exists without ``force``."""


class UnsupportedError(UserError):
    """A valid request this installation cannot serve (e.g. a kernel ORT lacks)."""


class ExportError(OnnxfuseError):
    """The exporter failed on a model it should handle."""


class RewriteError(OnnxfuseError):
    """The graph rewrite failed."""


class KernelError(OnnxfuseError):
    """A kernel launch or the runtime plugin failed."""


class ParityError(OnnxfuseError):
    """Numbers disagree beyond their tolerance (exit 1)."""

    exit_code = 1


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first non-blank line of ``error``'s message (third-party messages run to pages),
    or ``default`` (the exception's type name if not given) when the message is empty."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__ if default is None else default
