"""The tokenize stage."""
