"""Where the corpus stage's documents live, for every reader downstream of it.

A split is one or more Parquet parts in the corpus folder, read in name order:
``{split}-00000.parquet``, ``{split}-00001.parquet``, ... (the streaming corpus stage), or a single
``{split}.parquet`` (runs built before the corpus stage was sharded). Readers never glob themselves:
they call :func:`split_files` or :func:`iter_text_batches`, so the layout can change in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

SPLITS = ("train", "val")


def part_name(split: str, index: int) -> str:
    """The file name of part ``index`` of ``split``."""
    return f"{split}-{index:05d}.parquet"


def split_files(corpus_dir: str | Path, split: str) -> list[Path]:
    """The Parquet parts of ``split`` in order; an error naming the folder if there are none."""
    corpus_dir = Path(corpus_dir)
    parts = sorted(corpus_dir.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].parquet"))
    single = corpus_dir / f"{split}.parquet"
    if single.exists():
        parts = [single, *parts]
    if not parts:
        raise FileNotFoundError(f"{corpus_dir}: no '{split}' documents ({part_name(split, 0)} or {split}.parquet)")
    return parts


def iter_text_batches(corpus_dir: str | Path, split: str, batch_rows: int = 1024,
                      columns: tuple[str, ...] = ("text",)) -> Iterator[list[str]] | Iterator[dict[str, list]]:
    """The ``text`` column of ``split`` in batches of at most ``batch_rows`` (a dict of lists if several
    ``columns`` are asked for), part after part, in bounded memory."""
    import pyarrow.parquet as pq

    for path in split_files(corpus_dir, split):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(columns)):
            if len(columns) == 1:
                yield batch.column(0).to_pylist()
            else:
                yield batch.to_pydict()


def count_rows(corpus_dir: str | Path, split: str) -> int:
    """Documents in ``split`` (from the Parquet footers, no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in split_files(corpus_dir, split))
