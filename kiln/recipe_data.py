"""Recipe sections of the data side: ``corpus`` (sources and steps), ``tokenizer`` and ``tokens`` (with the
synthetic token generators). :mod:`kiln.recipe` assembles them with the other sections into a ``Recipe``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kiln.corpus.steps.registry import StepSpec
from kiln.section import NOT_FINGERPRINTED, Section

# ----------------------------------------------------------------------------- corpus


SOURCE_FIELD_KINDS: dict[str, tuple[str, ...]] = {  # source fields that only some kinds read
    "path": ("jsonl", "parquet", "txt"),
    "text_field": ("jsonl", "parquet"),
    "id_field": ("jsonl", "parquet"),
    "editions": ("shakespeare",),
}


class SourceConfig(Section):
    """One input source. ``kind`` picks the reader; ``path`` is required for file sources."""

    kind: Literal["shakespeare", "pydocs", "jsonl", "parquet", "txt"]
    path: str | None = None
    name: str | None = Field(None, description="label stored in the `source` column (default: kind or file stem)")
    text_field: str = "text"
    id_field: str | None = None
    editions: list[Literal["modern", "folio"]] = Field(default_factory=lambda: ["modern", "folio"])
    max_docs: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _path_for_files(self) -> SourceConfig:
        if self.kind in ("jsonl", "parquet", "txt") and not self.path:
            raise ValueError(f"source kind '{self.kind}' needs a `path`")
        return self

    def unused_fields(self) -> list[str]:
        """Fields this source's ``kind`` does not read (``editions`` of a ``txt`` folder, ...)."""
        return [f for f, kinds in SOURCE_FIELD_KINDS.items() if self.kind not in kinds]

    def shown(self) -> dict[str, Any]:
        """The source as JSON without the fields its kind does not read, unless set off their default."""
        data = self.model_dump(mode="json")
        for f in self.unused_fields():
            if getattr(self, f) == type(self).model_fields[f].get_default(call_default_factory=True):
                del data[f]
        return data


class CorpusConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(kind="shakespeare")], min_length=1)
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    dedup: bool = True
    min_chars: int = Field(200, ge=0)
    max_chars: int | None = Field(None, gt=0)
    select: dict[str, list[Any]] = Field(
        default_factory=dict, description="keep a document iff each named metadata field has one of the listed values")
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    split: Literal["hash", "tail"] = Field(
        "hash", description="hash: whole documents by a hash of the id; tail: the last val_fraction of the "
        "characters of the ordered concatenation (the document at the cut is split in two)")
    split_order_by: list[str] = Field(
        default_factory=list, description="tail split: metadata fields to sort by first (stable); [] = read order")
    split_seed: int = 0
    cache_dir: str | None = Field(None, description="download cache (default: $KILN_CACHE or ~/.cache/kiln)")
    steps: list[StepSpec] | None = Field(
        None, description="ordered curation steps ({step: name, ...params}); unset = normalize, empty, length "
        "(min_chars/max_chars), dedup (if dedup)")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="a step raising on one document: stop (error naming step and id) or skip and count it")
    executor: Literal["local", "ray", "slurm"] = Field(
        "local", description="per-document steps: local process pool, or datatrove's Ray / Slurm executor",
        json_schema_extra=NOT_FINGERPRINTED)
    workers: int = Field(1, ge=1, description="local: processes; ray/slurm: tasks (shards)",
                         json_schema_extra=NOT_FINGERPRINTED)
    executor_args: dict[str, Any] = Field(
        default_factory=dict, description="ray/slurm: extra arguments of datatrove's executor (slurm: partition, time)",
        json_schema_extra=NOT_FINGERPRINTED)
    shard_docs: int | None = Field(
        None, ge=1, description="streaming stage: cut the read documents into shards of at most this many documents")
    shard_bytes: int | None = Field(
        64 * 2**20, ge=1, description="streaming stage: shards hold at most this many bytes of text (a shard ends "
        "at whichever limit comes first; None = no limit); memory per worker grows with it, not with the corpus")


# ----------------------------------------------------------------------------- tokenizer / tokens


class TokenizerConfig(Section):
    kind: Literal["bpe"] = "bpe"
    vocab_size: int = Field(4096, ge=512, le=2**20, description="includes 256 byte tokens and the special tokens")
    min_frequency: int = Field(2, ge=1)


N_RESERVED_IDS = 113  # kiln.tokenizer.special.SPECIAL_TOKENS: ids below this are special tokens


class SyntheticSource(Section):
    """``tokens.synthetic``: token sequences from a seeded generator (kiln/data/synthetic.py) instead of corpus ->
    tokenizer -> tokens. Ids below 113 are the special tokens; data symbols are ``113 .. vocab_size - 1``."""

    vocab_size: int = Field(256, le=2**16, description="token ids in all, the 113 special ids included")
    n_train: int = Field(4096, ge=1, description="training documents")
    n_val: int = Field(256, ge=1, description="validation documents")
    seed: int = 0

    def n_symbols(self) -> int:
        return self.vocab_size - N_RESERVED_IDS


class MarkovSource(SyntheticSource):
    """A random first-order Markov chain (rows drawn from a Dirichlet); its entropy rate is the optimum."""

    generator: Literal["markov"]
    doc_len: int = Field(128, ge=2, description="data tokens per document (plus <|bos|> and <|eos|>)")
    concentration: float = Field(0.1, gt=0, description="Dirichlet concentration of each transition row: "
                                 "smaller = more predictable chain")

    @model_validator(mode="after")
    def _symbols(self) -> MarkovSource:
        if not 2 <= self.n_symbols() <= 4096:
            raise ValueError(f"markov needs 2 to 4096 data symbols: vocab_size in [{N_RESERVED_IDS + 2}, "
                             f"{N_RESERVED_IDS + 4096}], got {self.vocab_size}")
        return self


class RecallSource(SyntheticSource):
    """Associative recall: ``n_pairs`` key-value pairs, then ``n_queries`` of those keys, each followed by its value."""

    generator: Literal["associative_recall"]
    n_keys: int = Field(32, ge=2, description="key symbols (the other data symbols are values)")
    n_pairs: int = Field(8, ge=1, description="distinct keys, each with a value, per document")
    n_queries: int = Field(4, ge=1, description="queried keys per document (drawn from its pairs)")

    @model_validator(mode="after")
    def _symbols(self) -> RecallSource:
        if self.n_pairs > self.n_keys:
            raise ValueError(f"n_pairs ({self.n_pairs}) must be <= n_keys ({self.n_keys}): keys are distinct")
        if self.n_symbols() - self.n_keys < 2:
            raise ValueError(f"vocab_size {self.vocab_size} leaves {self.n_symbols() - self.n_keys} value symbols "
                             f"after {N_RESERVED_IDS} special ids and {self.n_keys} keys; need >= 2")
        return self


class TokensConfig(Section):
    dtype: Literal["auto", "uint16", "uint32"] = "auto"
    domain_field: str | None = Field(
        None, description="a corpus column (e.g. source) numbered per document as its domain: tokens/domains.json "
        "lists the values, each shard's .domain.npy the ids; train.route_by_domain routes by it "
        "(kiln/data/domains.py)")
    workers: int = Field(0, ge=0, description="processes encoding corpus parts in parallel; 0 = auto (one per core "
                         "when there are >= 2 parts per core, else 1); 1 = this process (the Rust encoder still uses "
                         "every core); same output either way",
                         json_schema_extra=NOT_FINGERPRINTED)
    synthetic: MarkovSource | RecallSource | None = Field(
        None, discriminator="generator", description="generated token sequences instead of corpus -> tokenizer -> "
        "tokens (generator: markov | associative_recall; kiln/data/synthetic.py)")
