"""Exceptions raised by ondevice. Every message names the problem and the fix."""
from __future__ import annotations


class OndeviceError(Exception):
    """Base class for ondevice errors that are the user's to fix (bad input, missing data)."""


class ConfigError(OndeviceError, ValueError):
    """A recipe or config object failed validation. `problems` lists (key path, message) pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


class DataNotFoundError(OndeviceError, FileNotFoundError):
    """A dataset's files are missing; the message carries the exact command that gets them."""


class ChecksumError(OndeviceError):
    """A file's checksum does not match the expected value."""


class CheckpointError(OndeviceError):
    """A checkpoint is missing, truncated or from an incompatible run."""


class TrainingDivergedError(OndeviceError, FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class MissingBackendError(ImportError):
    """A backend SDK is not installed; the message carries the pip line."""


class UnsupportedPrecisionError(OndeviceError, ValueError):
    """A target was asked for a precision it cannot produce; the message lists the ones it can."""


class ConversionError(OndeviceError, RuntimeError):
    """Conversion to a target failed; the message names the op/module, target, precision and what to try."""


class VerificationError(OndeviceError):
    """An artifact's outputs disagree with the PyTorch model beyond the thresholds."""


class UnsupportedOpError(OndeviceError, NotImplementedError):
    """An op cannot be evaluated or converted; the message names the op and where it came from."""


class OutputDirError(OndeviceError):
    """An output folder ondevice may not write into: not its own (and not empty), a system location, or a path
    that leaves the working directory; the message names the files found and the flag that overrides it."""


class SidecarError(OndeviceError):
    """An artifact's `<artifact>.json` record is unreadable, of an unknown schema, or has a field of the wrong type."""


class ArtifactChangedError(OndeviceError):
    """An artifact or checkpoint no longer has the sha256 recorded when ondevice wrote (and verified) it."""


def first_line(text: object, width: int = 300) -> str:
    """The first line of a message, at most `width` characters ('' for None or an empty message)."""
    return (str(text or "").splitlines() or [""])[0][:width]


class ArtifactLoadError(OndeviceError):
    """An artifact file its runtime cannot load or run (damaged, truncated, or not in that target's format)."""
