"""What every config section shares: strict tables, strict integers, "did you mean"."""

from __future__ import annotations

import difflib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

#: An integer field that refuses floats (1e9, 2.5) and booleans instead of truncating them.
Int = Annotated[int, Strict()]


class Section(BaseModel):
    """A config table: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FeatureSection(Section):
    """A section whose feature lands in a later release: accepted only while disabled."""

    enabled: bool = Field(False, description="Not available in this version")

    @model_validator(mode="after")
    def _check(self) -> "FeatureSection":
        if self.enabled:
            raise ValueError("enabled=true: this feature is not available in this version yet")
        return self


def suggest(word: str, choices: Any) -> str:
    """'; did you mean X?' for the closest of choices, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
