"""The one error type for problems the user can fix (bad input files, settings, folders, missing extras).

The CLI prints these as a few lines naming the file and the fix; anything else is a bug or an environment
failure (CUDA out of memory, a shape mismatch) and keeps its full traceback. Subclasses also derive from
the built-in type they replace, so ``except ValueError`` callers keep working.
"""

from __future__ import annotations


class SpacilError(Exception):
    """A problem with what the user gave us; the message names the file or setting and what to do."""


class UsageError(SpacilError, ValueError):
    """A bad value or combination of values (options, variants, dataset contents)."""


class MissingFileError(SpacilError, FileNotFoundError):
    """A file or folder the user pointed at does not exist."""


class RunFolderError(SpacilError, FileExistsError):
    """A run folder that cannot be used for this run (other config, other data, unreadable checkpoint)."""


class MissingExtraError(SpacilError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class SetupError(SpacilError, RuntimeError):
    """Something the user must set up first (an environment variable such as an API key)."""
