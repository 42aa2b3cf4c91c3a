"""Errors the library raises on bad input.

Every error names what is wrong (file, shape, range) so that the CLI can print it as one line.
"""


class FvitError(ValueError):
    """Base class for user-facing errors (bad file, shape, range, unknown name)."""


class InputError(FvitError):
    """An input image, mask or tensor is missing, unreadable or of the wrong shape / range."""


class UnknownNameError(FvitError, KeyError):
    """A registry lookup failed; the message lists what is available."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class CheckpointError(FvitError):
    """A checkpoint is missing, unreadable, or does not fit the architecture."""


class UnsupportedModelError(FvitError):
    """A method does not apply to this architecture (e.g. token methods on Swin)."""
