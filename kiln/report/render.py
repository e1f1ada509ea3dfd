"""The report's document model (a few block types) and its two renderers, HTML and Markdown.

Sections are built once as blocks and rendered twice, so ``index.html`` and ``report.md`` agree.
All text is escaped on the way out; nothing from a run directory reaches the page as markup.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Any

# --- a tiny document model -------------------------------------------------------------------


@dataclass
class Heading:
    text: str


@dataclass
class Text:
    text: str
    missing: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Image:
    file: str
    alt: str


@dataclass
class Code:
    text: str
    lang: str = ""


@dataclass
class Sample:
    prompt: str
    text: str
    meta: str


@dataclass
class Details:
    summary: str
    blocks: list[Block]


@dataclass
class Cards:
    items: list[tuple[str, str, str]]  # (label, value, note)


Block = Heading | Text | Table | Image | Code | Sample | Details | Cards


@dataclass
class Section:
    title: str
    blocks: list[Block]


# --- formatting ---------------------------------------------------------------------------------


def fmt(x: Any) -> str:
    """A number or value as a short readable string (ints with thousands separators)."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}"
    if isinstance(x, (dict, list)):
        return json.dumps(x, separators=(",", ":"), default=str)
    return str(x)


def human(n: Any) -> str:
    """A large count in short form: 12.3M, 4.5B."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return fmt(n)
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return fmt(n)


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


# --- rendering -------------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;color:#222;max-width:1000px;margin:2em auto;
padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.8em 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e4e4e4;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right}pre{background:#f7f7f7;padding:.7em;overflow-x:auto;
white-space:pre-wrap;word-break:break-word;border-radius:4px}.missing{color:#999;font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;
min-width:11em}.card .label,.card .note{color:#666;font-size:.85em}.card .value{font-size:1.8em;font-weight:600}
.prompt{color:#1f5fa8;font-weight:600}.meta{color:#666;font-size:.85em}img{max-width:100%}details{margin:.4em 0}
"""


def _e(x: Any, quote: bool = True) -> str:
    return html.escape(x if isinstance(x, str) else fmt(x), quote=quote)


def _m(x: Any) -> str:
    """Markdown text: ``<``, ``>`` and ``&`` escaped (no raw HTML gets through), quotes left readable."""
    return _e(x, quote=False)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _td(x: Any) -> str:
    return f'<td class="num">{_e(x)}</td>' if _is_num(x) else f"<td>{_e(x)}</td>"


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower())


def to_html(b: Block) -> str:
    if isinstance(b, Heading):
        return f"<h3>{_e(b.text)}</h3>"
    if isinstance(b, Text):
        return f'<p class="missing">{_e(b.text)}</p>' if b.missing else f"<p>{_e(b.text)}</p>"
    if isinstance(b, Table):
        head = "".join(f"<th>{_e(h)}</th>" for h in b.headers)
        body = "".join("<tr>" + "".join(map(_td, r)) + "</tr>" for r in b.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Image):
        return f'<p><img src="{_e(b.file)}" alt="{_e(b.alt)}"></p>'
    if isinstance(b, Code):
        return f"<pre>{_e(b.text)}</pre>"
    if isinstance(b, Sample):
        return f'<div class="meta">{_e(b.meta)}</div><pre><span class="prompt">{_e(b.prompt)}</span>{_e(b.text)}</pre>'
    if isinstance(b, Details):
        return f"<details><summary>{_e(b.summary)}</summary>{''.join(to_html(x) for x in b.blocks)}</details>"
    cards = "".join(
        f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
        f'<div class="note">{_e(note)}</div></div>'
        for label, value, note in b.items
    )
    return f'<div class="cards">{cards}</div>'


def _cell(x: Any) -> str:
    return _m(x).replace("|", "\\|").replace("\n", " ")


def _fence(text: str, lang: str = "") -> str:
    run = longest = 0
    for c in text:
        run = run + 1 if c == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip(chr(10))}\n{fence}"


def to_md(b: Block) -> str:
    if isinstance(b, Heading):
        return f"### {_m(b.text)}"
    if isinstance(b, Text):
        return f"_{_m(b.text)}_" if b.missing else _m(b.text)
    if isinstance(b, Table):
        first = b.rows[0] if b.rows else []
        align = ["---:" if i < len(first) and _is_num(first[i]) else "---" for i in range(len(b.headers))]
        lines = ["| " + " | ".join(_cell(h) for h in b.headers) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in b.rows]
        return "\n".join(lines)
    if isinstance(b, Image):
        return f"![{_m(b.alt)}]({b.file})"
    if isinstance(b, Code):
        return _fence(b.text, b.lang)
    if isinstance(b, Sample):
        return f"{_m(b.meta)}\n\n{_fence(b.prompt + b.text)}"
    if isinstance(b, Details):
        inner = "\n\n".join(to_md(x) for x in b.blocks)
        return f"<details><summary>{_m(b.summary)}</summary>\n\n{inner}\n\n</details>"
    return to_md(Table(["", "value", "note"], [list(item) for item in b.items]))


def render_html(title: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{_slug(s.title)}">{_e(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{_slug(s.title)}"><h2>{_e(s.title)}</h2>\n' + "\n".join(map(to_html, s.blocks)) + "</section>"
        for s in sections
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>\n'
        f"<body><h1>{_e(title)}</h1><nav>{nav}</nav>\n{body}\n</body></html>\n"
    )


def render_md(title: str, sections: list[Section]) -> str:
    parts = [f"# {_m(title)}"]
    for s in sections:
        parts.append(f"## {_m(s.title)}")
        parts += [to_md(b) for b in s.blocks]
    return "\n\n".join(parts) + "\n"


def images(blocks: list[Block]) -> list[str]:
    """File names of the images the blocks show."""
    found: list[str] = []
    for b in blocks:
        if isinstance(b, Image):
            found.append(b.file)
        elif isinstance(b, Details):
            found += images(b.blocks)
    return found
