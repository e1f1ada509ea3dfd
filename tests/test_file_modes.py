"""Artifacts follow the user's umask (issue 12 point 19): no stage folder, file or export is private by accident.

``tempfile.mkstemp`` / ``mkdtemp`` create 0o600 / 0o700; kiln's atomic writes reset the mode to what ``open``
and ``mkdir`` give under the umask, so a run directory shared with a group (umask 0o002/0o027) stays shared.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kiln import atomic


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_files_and_staged_folders_follow_the_umask(tmp_path, mask):
    with umask(mask):
        atomic.write_text(tmp_path / "a.txt", "x")
        atomic.write_json(tmp_path / "b.json", {"k": 1})
        with atomic.staged_path(tmp_path / "c.bin") as tmp:
            tmp.write_bytes(b"abc")
        with atomic.staged_dir(tmp_path / "stage") as d:
            atomic.write_text(d / "inner.txt", "y")
        assert atomic.current_umask() == mask
    for name in ("a.txt", "b.json", "c.bin", "stage/inner.txt"):
        assert mode(tmp_path / name) == 0o666 & ~mask, name
    assert mode(tmp_path / "stage") == 0o777 & ~mask


def test_a_private_umask_is_respected_too(tmp_path):
    with umask(0o077):
        atomic.write_text(tmp_path / "a.txt", "x")
        with atomic.staged_dir(tmp_path / "stage"):
            pass
    assert mode(tmp_path / "a.txt") == 0o600 and mode(tmp_path / "stage") == 0o700


@pytest.mark.parametrize("architecture", ["llama", "remote"])
def test_hf_export_folder_follows_the_umask(tmp_path, architecture):
    pytest.importorskip("transformers")
    from kiln.model.config import TransformerConfig
    from kiln.model.hf_remote import export_auto

    torch.manual_seed(0)
    attention = "causal" if architecture == "llama" else "bidirectional"
    model = TransformerConfig(vocab_size=300, max_seq_len=32, n_layer=1, n_head=2, d_model=32,
                              attention=attention).build().eval()
    out = tmp_path / "export" / "model"
    with umask(0o022):
        summary = export_auto(model, out, None, verify=False)
    assert summary["remote_code"] is (architecture == "remote")
    assert mode(out) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(mode(p) == 0o644 for p in files), {p.name: oct(mode(p)) for p in files}


def test_follow_umask_leaves_untouched_files_alone(tmp_path):
    keep = tmp_path / "mine.txt"
    keep.write_text("private")
    keep.chmod(0o600)
    tmp_path.chmod(0o700)
    before = atomic.snapshot(tmp_path)
    fd = os.open(tmp_path / "new.bin", os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    with umask(0o022):
        atomic.follow_umask(tmp_path, before)
    assert mode(keep) == 0o600 and mode(tmp_path) == 0o700 and mode(tmp_path / "new.bin") == 0o644


def test_writers_that_create_private_files_are_normalised(tmp_path):
    """safetensors' save_file creates 0o600 files: inside staged folders and staged paths they get the umask."""
    from safetensors.torch import save_file

    with umask(0o022):
        with atomic.staged_dir(tmp_path / "ckpt") as d:
            save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
        with atomic.staged_path(tmp_path / "w.safetensors") as p:
            save_file({"w": torch.zeros(2)}, str(p))
    assert mode(tmp_path / "ckpt" / "model.safetensors") == 0o644
    assert mode(tmp_path / "w.safetensors") == 0o644
