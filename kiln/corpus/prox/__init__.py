"""ProX, "Programming Every Example" (Zhou et al. 2024): refine each document by a small program.

A generator emits a program per document (doc level: ``drop_doc()`` / ``keep_doc()``; chunk level:
``remove_lines``, ``normalize``, ``skip_chunk``); the executor runs it under the paper's rules. Programs
are logged (``prox_programs.jsonl``) and can be replayed to reproduce the step's output exactly.
"""
