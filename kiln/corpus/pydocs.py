"""Built-in corpus `pydocs`: docstrings of the Python standard library.

One document per public module, class, function or method whose own docstring has at least
``MIN_DOC_CHARS`` characters. Modules are imported in a child process of the running interpreter
(``python -I this_file OUT.json``), so import side effects (terminal escapes, signal handlers,
warnings, a module that prints) stay out of the caller, and a hang is cut off by a timeout.

Rules, all deterministic for a given interpreter:
- modules: ``sys.stdlib_module_names`` plus the public submodules of packages, in sorted order;
  names with a ``_``-prefixed part, modules in ``SKIP`` (side effects, GUIs, test suites,
  deprecated shims) and modules that fail to import are skipped;
- classes and functions: public attributes of a module in sorted order, kept where the object
  belongs to the module (``__module__`` is the module, or a private ``_x`` C accelerator) and the
  attribute is its own name (no aliases); each object is used once, under its first name;
- methods: public attributes in a class's own ``__dict__`` with their own docstring (kind
  ``function``, id ``module.Class.method``).
The document text is the docstring after :func:`inspect.cleandoc`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MIN_DOC_CHARS = 40
TIMEOUT_S = 300
# Top-level modules never imported: side effects on import (browser, printing, windows, writing
# grammar caches), GUIs, bundled tests/tools, and pure-data or Windows-only modules.
SKIP = frozenset(
    {
        "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "distutils",
        "ensurepip", "pydoc_data", "test", "msilib", "msvcrt", "winreg", "winsound", "nt",
    }
)  # fmt: skip
# Packages whose submodules are not walked (boilerplate per-codec modules).
NO_SUBMODULES = frozenset({"encodings"})
SKIP_PARTS = frozenset({"test", "tests", "idle_test"})


def _public(name: str) -> bool:
    return all(part and not part.startswith("_") for part in name.split("."))


def module_names() -> list[str]:
    """Public stdlib module names (top level and walked submodules), sorted; imports packages to walk them."""
    names: set[str] = set()
    for top in sorted(sys.stdlib_module_names):
        if top in SKIP or not _public(top):
            continue
        mod = _import(top)
        if mod is None:
            continue
        names.add(top)
        if hasattr(mod, "__path__") and top not in NO_SUBMODULES:
            for info in pkgutil.walk_packages(mod.__path__, prefix=f"{top}.", onerror=lambda _n: None):
                if _public(info.name) and not SKIP_PARTS & set(info.name.split(".")):
                    names.add(info.name)
    return sorted(names)


def _import(name: str) -> Any | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - ImportError, OSError, SystemExit... all mean "skip"
            return None


def _doc(obj: Any) -> str | None:
    raw = obj.__doc__ if isinstance(obj.__doc__, str) else None
    if not raw:
        return None
    text = inspect.cleandoc(raw)
    return text if len(text) >= MIN_DOC_CHARS else None


def _belongs(obj: Any, modname: str) -> bool:
    owner = getattr(obj, "__module__", None)
    return isinstance(owner, str) and (owner == modname or owner.startswith("_"))


def collect(names: list[str] | None = None) -> Iterator[dict]:
    """Yield ``{"id", "text", "module", "kind"}`` for every documented object (in this process)."""
    seen: set[int] = set()
    for modname in names if names is not None else module_names():
        mod = _import(modname)
        if mod is None or id(mod) in seen:
            continue
        seen.add(id(mod))
        top = modname.split(".")[0]
        if doc := _doc(mod):
            yield {"id": modname, "text": doc, "module": top, "kind": "module"}
        for attr in sorted(vars(mod)):
            obj = vars(mod)[attr]
            is_class = inspect.isclass(obj)
            if not _public(attr) or id(obj) in seen or not (is_class or inspect.isroutine(obj)):
                continue
            if getattr(obj, "__name__", None) != attr or not _belongs(obj, modname):
                continue
            seen.add(id(obj))
            if doc := _doc(obj):
                kind = "class" if is_class else "function"
                yield {"id": f"{modname}.{attr}", "text": doc, "module": top, "kind": kind}
            if is_class:
                yield from _methods(obj, f"{modname}.{attr}", top, seen)


def _methods(cls: type, prefix: str, top: str, seen: set[int]) -> Iterator[dict]:
    for attr in sorted(vars(cls)):
        obj = vars(cls)[attr]
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
        if not _public(attr) or id(obj) in seen or not inspect.isroutine(obj):
            continue
        seen.add(id(obj))
        if doc := _doc(obj):
            yield {"id": f"{prefix}.{attr}", "text": doc, "module": top, "kind": "function"}


def read_pydocs(source: str = "pydocs", timeout: float = TIMEOUT_S) -> Iterator[dict]:
    """Documents of the stdlib docstrings, collected in an isolated child of this interpreter."""
    with tempfile.TemporaryDirectory(prefix="kiln-pydocs-") as tmp:
        out = Path(tmp) / "docs.json"
        cmd = [sys.executable, "-I", str(Path(__file__).resolve()), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"pydocs: collecting stdlib docstrings took over {timeout:.0f} s") from exc
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"pydocs: collector failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        docs = json.loads(out.read_text(encoding="utf-8"))
    for doc in docs:
        yield {"id": f"{source}/{doc['id']}", "text": doc["text"], "source": source,
               "module": doc["module"], "kind": doc["kind"]}  # fmt: skip


def _main(out_path: str) -> None:
    """Child entry point: collect with stdout/stderr (fd level) silenced, write JSON to ``out_path``."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = [os.dup(1), os.dup(2)]
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            docs = list(collect())
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
    Path(out_path).write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    _main(sys.argv[1])
