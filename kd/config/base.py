"""The base of every params section: unknown keys are errors, each field documents itself."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key and what was expected."""


class Section(BaseModel):
    # Unknown keys are typos until proven otherwise (nanoGPT's lesson: a silent typo is a wasted run).
    # Each field's docstring is its description in the configuration reference (`kd params --reference`).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
