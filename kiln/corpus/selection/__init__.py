"""Data-selection and ordering methods, each a scorer or step registered from a ``*_steps`` module here.

Step modules must import only cheap things at module level (see :mod:`kiln.corpus.steps.base`); the
method's implementation (torch, faiss, POT, fastText) is imported inside the step's functions.
"""
