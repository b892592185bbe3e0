"""Errors raised by lensteer.

Every error derives from :class:`LensteerError` and also from the builtin a caller would
naturally catch (``ValueError``, ``KeyError``, ``IndexError``), so ``except ValueError`` keeps
working. Messages follow one template: what was wrong (the value), what is allowed, how to fix it.
"""


class LensteerError(Exception):
    """Base class of every error lensteer raises on purpose."""


class ConfigError(LensteerError, ValueError):
    """A parameter or config value is outside what is allowed."""


class HookSiteError(LensteerError, KeyError):
    """A layer, hook site or position does not exist on this model or prompt."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0]) if self.args else ""


class DataError(LensteerError, ValueError):
    """A dataset or prompt list is empty, malformed or missing a field."""


class ModelLoadError(LensteerError, OSError):
    """A model could not be found or loaded (offline, missing files, bad path)."""


class ArtifactMismatchError(LensteerError, ValueError):
    """An artifact (vector, direction, steering) belongs to another model, site or width."""


class JudgeError(LensteerError, RuntimeError):
    """A judge could not score a response: server down, timed out, or replied without a valid score."""


class WriteError(LensteerError, OSError):
    """A file could not be written (disk full, no permission, read-only folder); the old file is kept."""
