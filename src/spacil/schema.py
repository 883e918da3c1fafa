"""The base of every config section, importable without the whole schema.

Method modules declare their own config section (see :mod:`spacil.methods.registry`); they import
this module, never :mod:`spacil.config`, because the schema is assembled from their registrations.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .errors import SpacilError


class ConfigError(SpacilError, ValueError):
    """A configuration that cannot be used; the message is one line meant for the user."""


class StrictModel(BaseModel):
    """Unknown keys are errors and assignments are validated: a silently ignored typo is the worst bug."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
