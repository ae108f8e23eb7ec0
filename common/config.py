"""The base of every configuration model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One concern of the configuration.  Unknown keys are errors, so a misspelt key fails loudly with its path
    instead of silently leaving a default in force."""

    model_config = ConfigDict(extra="forbid")
