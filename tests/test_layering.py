"""The package layering (docs/architecture.md) holds in the code: every import of every kiln module, read with
``ast`` (top-level, function-level and ``TYPE_CHECKING`` imports alike), against the rules below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kiln"

# (package whose modules are checked, modules it must not import, why). A forbidden entry names a package (all its
# modules) or one module.
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("kiln.model", ("kiln.objectives", "kiln.corpus", "kiln.train", "kiln.infer", "kiln.eval", "kiln.stages",
                    "kiln.stages_dist", "kiln.cli"),
     "the model is the bottom layer: objectives, training, inference and evaluation build on it"),
    ("kiln.corpus", ("kiln.train", "kiln.objectives"),
     "corpus curation may score with a model (kiln.model.load) but never trains one"),
    ("kiln.data", ("kiln.model", "kiln.train", "kiln.objectives"),
     "token shards and batches know nothing of models or objectives"),
    ("kiln.eval", ("kiln.train.trainer", "kiln.stages", "kiln.cli"),
     "evaluation loads checkpoints through kiln.model.load and finds them through kiln.artifacts"),
    ("kiln.infer", ("kiln.train.trainer", "kiln.stages", "kiln.cli"),
     "inference loads checkpoints through kiln.model.load and finds them through kiln.artifacts"),
    ("kiln.tokenizer", ("kiln.data", "kiln.model", "kiln.train", "kiln.objectives", "kiln.stages"),
     "the tokenizer is trained from the corpus and knows nothing downstream of it"),
]

# Known exceptions, each with the reason it is still there (remove the entry once fixed). None left: the MiniLM
# MLM continuation moved from kiln/model/bert_mlm.py to kiln/train/bert_mlm.py.
EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports anywhere in its body (``from a import b`` counts as a and a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def matches(module: str, target: str) -> bool:
    return module == target or module.startswith(target + ".")


def violations(root: Path = ROOT) -> list[str]:
    """Every import in the ``kiln`` package at ``root`` that breaks a rule (known exceptions left out)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        for package, forbidden, why in RULES:
            if not matches(name, package):
                continue
            for imported in sorted(imports_of(path, root)):
                for target in forbidden:
                    if matches(imported, target) and (name, target) not in EXCEPTIONS:
                        out.append(f"{name} imports {imported} ({package} must not import {target}: {why})")
    return out


def test_layering_rules_hold():
    assert violations() == []


def test_known_exceptions_are_still_needed():
    """An exception whose module no longer exists (or no longer imports the target) must be removed."""
    stale = []
    for name, target in EXCEPTIONS:
        path = ROOT.parent / (name.replace(".", "/") + ".py")
        if not path.exists() or not any(matches(i, target) for i in imports_of(path)):
            stale.append((name, target))
    assert not stale, f"remove these from EXCEPTIONS: {stale}"


@pytest.mark.parametrize(("source", "bad"), [
    ("from kiln.train.checkpoint import load_model\n", "kiln.train"),
    ("def f():\n    from kiln.objectives.clm import IGNORE\n", "kiln.objectives"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kiln.infer.generate import KVCache\n",
     "kiln.infer"),
    ("import kiln.eval.lm\n", "kiln.eval"),
    ("from ..train import trainer\n", "kiln.train"),
])
def test_the_checker_sees_every_kind_of_import(tmp_path, source, bad):
    """The rules would catch a violation of each form (so the main test cannot pass vacuously)."""
    fake = tmp_path / "kiln" / "model" / "offender.py"
    fake.parent.mkdir(parents=True)
    (tmp_path / "kiln" / "__init__.py").write_text("")
    (fake.parent / "__init__.py").write_text("")
    fake.write_text(source)
    assert any(f"must not import {bad}" in v for v in violations(tmp_path / "kiln"))
