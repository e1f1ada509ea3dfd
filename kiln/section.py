"""The base of every recipe section (kept apart from :mod:`kiln.recipe` so step modules can import it cheaply)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def fingerprint(self) -> str:
        return fingerprint_of(config_view(self))


NOT_FINGERPRINTED: dict[str, Any] = {"fingerprint": False}  # Field(json_schema_extra=...): left out of fingerprints
# Field(json_schema_extra=...) of a path a corpus step reads: its content joins the stage's input records
# (kiln/inputs.py), so editing the file rebuilds the stage. MODEL: a checkpoint / run / export folder (plus its
# run's tokenizer/ when the step's `tokenizer` is unset); FILE: one file; TREE: a file or every file of a folder.
# A file a step reads without a field naming it: the step params' `implied_inputs(resolve) -> {label: path}`.
INPUT_MODEL: dict[str, Any] = {"input": "model"}
INPUT_FILE: dict[str, Any] = {"input": "file"}
INPUT_TREE: dict[str, Any] = {"input": "tree"}


def _is_tag(annotation: Any) -> bool:
    """A ``Literal`` of one value (a discriminator such as ``step: Literal["minhash"]``): always kept."""
    return get_origin(annotation) is Literal and len(get_args(annotation)) == 1


def config_view(obj: Any) -> Any:
    """The JSON of a config with every field at its default left out, recursively (tags kept).

    Fingerprints hash this view, so adding an optional field (default unchanged) to a section keeps every
    existing fingerprint, while setting any field to a non-default value changes it. Fields marked
    ``json_schema_extra=NOT_FINGERPRINTED`` (worker counts, executors: how a stage runs, not what it
    writes) are left out whatever their value."""
    if isinstance(obj, BaseModel):
        out = {}
        for name, field in type(obj).model_fields.items():
            if (field.json_schema_extra or {}) == NOT_FINGERPRINTED:  # how, not what: same output either way
                continue
            value = getattr(obj, name)
            if not field.is_required() and not _is_tag(field.annotation):
                default = field.get_default(call_default_factory=True)
                if value == default and type(value) is type(default):
                    continue
            out[name] = config_view(value)
        return out
    if isinstance(obj, dict):
        return {str(k): config_view(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [config_view(v) for v in obj]
    return to_jsonable_python(obj)


def fingerprint_of(obj: Any) -> str:
    """A short stable hash of a JSON-able object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
