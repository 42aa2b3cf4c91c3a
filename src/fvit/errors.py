"""Errors the library raises on bad input.

Every error names what is wrong (file, shape, range) so that the CLI can print it as one line.
Messages speak the library's language (keyword arguments such as ``checkpoint`` or
``max_pixels=None``), never command-line flags: an error may list the keyword arguments that would
fix it in ``params``, and the CLI, which knows its own flags, adds them (`fvit.cli.common.cli_message`).
"""


class FvitError(ValueError):
    """Base class for user-facing errors (bad file, shape, range, unknown name).

    ``params``: the library keyword arguments the message asks the caller to change (the CLI names
    its matching options after the message)."""

    def __init__(self, *args: object, params: tuple[str, ...] = ()):
        super().__init__(*args)
        self.params = tuple(params)


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
