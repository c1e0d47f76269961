"""The strict base of every settings section: unknown keys, NaN and infinities are refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # validate_default: defaults go through the validators too (``~`` in the default home).
    # allow_inf_nan=False: a NaN bound would make every comparison false (every row invalid).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True,
                              allow_inf_nan=False)
