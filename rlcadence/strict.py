"""The base of every configuration model: unknown keys, non-finite floats and booleans-as-numbers refused.

Why its own module: it imports pydantic only, so every config model (flow parameters, objectives, sampling,
environments, the tiny model's shape) shares it without pulling in torch. pydantic on its own accepts
``lr=Infinity`` (a step commits ``train_lr=inf``, then generation crashes on NaN) and ``steps=true`` (as 1).
"""

from __future__ import annotations

import types
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator


def _scalar_types(tp: Any) -> set:
    """The alternatives of a (possibly Optional/Union/Annotated) annotation."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in get_args(tp)))
    if origin is Annotated:
        return _scalar_types(get_args(tp)[0])
    return {tp}


class Strict(BaseModel):
    """extra="forbid", allow_inf_nan=False, and a bool is not a number (pydantic's lax mode takes True as 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    RENAMED: ClassVar[dict[str, str]] = {}  # old key -> new key, so an old config fails saying what to write

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: object) -> object:
        if isinstance(data, dict):
            for old, new in cls.RENAMED.items():
                if old in data:
                    raise ValueError(f"`{old}` was renamed to `{new}` (an RL environment, not a Prefect task): "
                                     f"write `{new}:` instead")
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_number(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool) and info.field_name in cls.model_fields:
            alternatives = _scalar_types(cls.model_fields[info.field_name].annotation)
            if bool not in alternatives and alternatives & {int, float}:
                raise ValueError("must be a number, not a boolean")
        return v
