"""Document scorers (a score column per document) and the ``select`` step that keeps documents by a score."""
