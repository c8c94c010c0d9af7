"""Mixture sampling to domain weights."""
