"""Finding and redacting personal data."""
