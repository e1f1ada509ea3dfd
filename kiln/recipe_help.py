"""Field help from the recipe schema: ``kiln recipe explain train.lr`` (type, default, allowed values, description).

The text comes from the pydantic models in :mod:`kiln.recipe` (and the corpus step registry), so help can never
drift from what validation accepts. A section path (``train``) lists its fields; a list of sources or steps
is entered by an index or, for ``corpus.steps``, a step name (``corpus.steps.minhash.threshold``).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kiln.recipe import SOURCE_FIELD_KINDS, Recipe, RecipeError, SourceConfig

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "at least"),
           ("max_length", "at most"))


def _strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    return tp


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    tp = _strip_annotated(tp)
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)) and len(args) == 1:
            return args[0], True
    return tp, False


def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The pydantic models a field holds (itself, its list items, or the members of a union)."""
    tp, _ = _optional_inner(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if get_origin(tp) in (list, tuple):
        return _models_in(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        return [m for a in get_args(tp) for m in _models_in(a)]
    return []


def type_name(tp: Any) -> str:
    """A short human name of an annotation: ``int``, ``float or null``, ``list of source``, ``one of ...``."""
    tp, optional = _optional_inner(tp)
    if get_origin(tp) is Literal:
        name = "one of " + ", ".join(repr(a) for a in get_args(tp))
    elif get_origin(tp) in (list, tuple):
        name = f"list of {type_name(get_args(tp)[0])}"
    elif get_origin(tp) is dict:
        name = "mapping"
    elif get_origin(tp) in (Union, types.UnionType):
        models = _models_in(tp)
        name = "a corpus step" if models else " or ".join(type_name(a) for a in get_args(tp))
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        name = "section" if tp is not SourceConfig else "source"
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} or null" if optional else name


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, word in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{word} {value}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "[" + ", ".join(str(v.model_dump(exclude_defaults=True)) for v in value) + "]"
    return "null" if value is None else repr(value)


def _step_models() -> dict[str, type[BaseModel]]:
    from kiln.corpus.steps.registry import REGISTRY

    return {name: sd.params for name, sd in REGISTRY.items()}


def _lookup(path: str) -> tuple[type[BaseModel], str | None, FieldInfo | None]:
    """Walk ``path`` from the recipe root: (model holding the field, field name, field) or (model, None, None)."""
    model: type[BaseModel] = Recipe
    parts = [p for p in path.split(".") if p]
    i = 0
    while i < len(parts):
        part = parts[i]
        if part not in model.model_fields:
            known = ", ".join(model.model_fields)
            where = ".".join(parts[:i]) or "the recipe"
            raise RecipeError(f"{'.'.join(parts[: i + 1])}: unknown field; {where} has: {known}")
        field = model.model_fields[part]
        if i == len(parts) - 1:
            return model, part, field
        inner = _models_in(field.annotation)
        if not inner:
            raise RecipeError(f"{'.'.join(parts[: i + 1])} is a value ({type_name(field.annotation)}), not a section")
        i += 1
        if parts[i].isdigit():  # corpus.sources.0.kind: the index does not change the schema
            i += 1
            if i == len(parts):
                return model, part, field
        if len(inner) == 1:
            model = inner[0]
            continue
        steps = _step_models()  # corpus.steps.<step name>.<param>
        if parts[i] not in steps:
            raise RecipeError(f"{'.'.join(parts[: i + 1])}: unknown step; steps are {', '.join(sorted(steps))}")
        model = steps[parts[i]]
        i += 1
        if i == len(parts):
            return model, None, None
    return model, None, None


def _first_sentence(text: str | None, limit: int = 90) -> str:
    text = (text or "").strip()
    text = text.split("; ")[0] if len(text) > limit else text
    return text if len(text) <= limit else text[: limit - 3].rsplit(" ", 1)[0] + " ..."


def _field_lines(path: str, name: str, field: FieldInfo) -> list[str]:
    lines = [path, f"  type:     {type_name(field.annotation)}"]
    if bounds := _bounds(field):
        lines[-1] += f" ({bounds})"
    lines.append(f"  default:  {_default(field)}")
    tp, _ = _optional_inner(field.annotation)
    if get_origin(tp) is Literal:
        lines.append("  allowed:  " + ", ".join(str(a) for a in get_args(tp)))
    if field.description:
        lines.append(f"  about:    {field.description}")
    if name in SOURCE_FIELD_KINDS and ".sources" in path:
        lines.append(f"  read by:  {', '.join(SOURCE_FIELD_KINDS[name])} sources only")
    if len(_models_in(tp)) > 1:  # corpus.steps: a union of step models
        lines.append(f"  steps:    {', '.join(sorted(_step_models()))} (kiln recipe explain {path}.NAME)")
    elif _models_in(tp) and len(_models_in(tp)) == 1:
        lines.append(f"  fields:   {', '.join(_models_in(tp)[0].model_fields)} (kiln recipe explain {path}.FIELD)")
    return lines


def _section_lines(path: str, model: type[BaseModel]) -> list[str]:
    doc = (model.__doc__ or "").strip().splitlines()
    lines = [f"{path or 'recipe'}: {doc[0]}" if doc and not doc[0].startswith("!!!") else path or "recipe"]
    width = max(len(n) for n in model.model_fields)
    for name, field in model.model_fields.items():
        about = _first_sentence(field.description)
        lines.append(f"  {name:<{width}}  {type_name(field.annotation)} = {_default(field)}"
                     + (f"  # {about}" if about else ""))
    lines.append(f"(kiln recipe explain {path + '.' if path else ''}FIELD for one field)")
    return lines


def explain(path: str) -> str:
    """Help for one recipe field or section path (``train.lr``, ``train``, ``corpus.sources.kind``)."""
    path = path.strip().strip(".")
    model, name, field = _lookup(path)
    if field is None or name is None:
        return "\n".join(_section_lines(path, model))
    inner = _models_in(field.annotation)
    if len(inner) == 1 and inner[0] is not SourceConfig and not path.endswith(".sources"):
        return "\n".join(_section_lines(path, inner[0]))
    return "\n".join(_field_lines(path, name, field))
