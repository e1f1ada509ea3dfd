"""Registers the ``augment`` corpus step (:mod:`kiln.corpus.augment.steps`; EDA, Wei & Zou 2019, arXiv 1901.11196,
and LM sampling, with consistency/confidence filters) through the registry's auto-discovery of
``kiln/corpus/selection/*steps.py``."""

from kiln.corpus.augment.steps import STEPS

__all__ = ["STEPS"]
