"""Gopher and C4 heuristic rules."""
