"""kiln: turn a raw text corpus into a compact language model."""

__version__ = "0.1.0"
