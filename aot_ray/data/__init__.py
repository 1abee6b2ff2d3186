"""Data: synthetic sources, tokenizers, prepared (cached) token arrays, windows, batch order and direction."""
