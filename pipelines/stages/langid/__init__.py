"""The langid stage."""
