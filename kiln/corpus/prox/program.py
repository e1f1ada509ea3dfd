"""ProX programs (Zhou et al. 2024, "Programming Every Example"): the operations and their parser.

Operations, one call per line:

- doc level: ``drop_doc()``, ``keep_doc()``;
- chunk level: ``remove_lines(line_start=i, line_end=j)`` (inclusive, 0-based *global* line indices,
  positional ``remove_lines(i, j)`` too; ``remove_lines(all=True)`` removes every line),
  ``normalize(source_str="a", target_str="b")`` (plain string replace; with one argument the string is
  deleted), ``skip_chunk()`` (nothing to do in this chunk).

Arguments are Python literals, parsed with :mod:`ast` (never evaluated). Blank lines and Markdown code
fences are ignored; every other line that is not a well-formed call of a known operation is a *parse
error* (the reference executor silently skips unknown lines; kiln counts them, because a generator that
emits them is malfunctioning, and the executor's rule for >= 2 errors is to keep the original).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DropDoc:
    def render(self) -> str:
        return "drop_doc()"


@dataclass(frozen=True)
class KeepDoc:
    def render(self) -> str:
        return "keep_doc()"


@dataclass(frozen=True)
class SkipChunk:
    def render(self) -> str:
        return "skip_chunk()"


@dataclass(frozen=True)
class RemoveLines:
    start: int = 0
    end: int = 0
    all: bool = False

    def render(self) -> str:
        return "remove_lines(all=True)" if self.all else f"remove_lines(line_start={self.start}, line_end={self.end})"


@dataclass(frozen=True)
class Normalize:
    source: str
    target: str = ""

    def render(self) -> str:
        return f"normalize(source_str={self.source!r}, target_str={self.target!r})"


Op = DropDoc | KeepDoc | SkipChunk | RemoveLines | Normalize
_SIGNATURES: dict[str, tuple[str, ...]] = {
    "drop_doc": (), "keep_doc": (), "skip_chunk": (),
    "remove_lines": ("line_start", "line_end"), "normalize": ("source_str", "target_str"),
}  # fmt: skip


@dataclass
class ParsedProgram:
    ops: list[Op] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class OpError(ValueError):
    pass


def _args(call: ast.Call, name: str) -> dict[str, object]:
    names = _SIGNATURES[name]
    if len(call.args) > len(names):
        raise OpError(f"{name}() takes at most {len(names)} positional arguments")
    args: dict[str, object] = {}
    for key, node in zip(names, call.args, strict=False):
        args[key] = ast.literal_eval(node)
    for kw in call.keywords:
        if kw.arg is None or (kw.arg not in names and not (name == "remove_lines" and kw.arg == "all")):
            raise OpError(f"{name}() got an unexpected argument {kw.arg!r}")
        if kw.arg in args:
            raise OpError(f"{name}() got {kw.arg!r} twice")
        args[kw.arg] = ast.literal_eval(kw.value)
    return args


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OpError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def parse_op(line: str) -> Op:
    """One operation from one line; raises :class:`OpError` (or a SyntaxError/ValueError) if malformed."""
    node = ast.parse(line.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id not in _SIGNATURES:
        raise OpError("not a call of drop_doc, keep_doc, remove_lines, normalize or skip_chunk")
    name = node.func.id
    args = _args(node, name)
    if name == "drop_doc":
        return DropDoc()
    if name == "keep_doc":
        return KeepDoc()
    if name == "skip_chunk":
        return SkipChunk()
    if name == "remove_lines":
        if args.get("all") is True and set(args) == {"all"}:
            return RemoveLines(all=True)
        if set(args) != {"line_start", "line_end"}:
            raise OpError("remove_lines needs line_start and line_end (or all=True)")
        start, end = _int(args["line_start"], "line_start"), _int(args["line_end"], "line_end")
        if start > end:
            raise OpError(f"line_start {start} > line_end {end}")
        return RemoveLines(start, end)
    if "source_str" not in args:
        raise OpError("normalize needs source_str")
    source, target = args["source_str"], args.get("target_str", "")
    if not isinstance(source, str) or not isinstance(target, str):
        raise OpError("normalize arguments must be strings")
    return Normalize(source, target)


def parse_program(text: str) -> ParsedProgram:
    """All operations of a program text, in order, and one error message per malformed line."""
    out = ParsedProgram()
    for n, raw in enumerate(text.split("\n")):
        line = raw.strip()
        if not line or line.startswith("```"):
            continue
        try:
            out.ops.append(parse_op(line))
        except (OpError, SyntaxError, ValueError, TypeError) as exc:
            out.errors.append(f"line {n}: {line[:80]!r}: {exc}")
    return out


def render_program(ops: list[Op]) -> str:
    """Program text for ``ops`` (one call per line); :func:`parse_program` gives the ops back."""
    return "\n".join(op.render() for op in ops)
