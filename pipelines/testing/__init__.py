"""Generated sample data and evaluation helpers for tests, benches and the demo."""
