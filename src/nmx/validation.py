"""What every pydantic boundary (recipes, hardware YAML) shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from nmx.errors import NmxError


def as_value_error(check, value):
    """Run a library check; pydantic reports ValueErrors with their field, so convert ours."""
    try:
        return check(value)
    except NmxError as err:
        raise ValueError(str(err)) from None


class Strict(BaseModel):
    """A frozen section that refuses unknown keys (a typo is an error, not a silent default) and
    does not coerce types (`max_windows: true` is an error, not 1; `seq_len: "2048"` too)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
