"""Learned corpus filters: a fastText quality classifier and a kiln-checkpoint perplexity filter."""
