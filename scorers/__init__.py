"""Model wrappers and trainers used by the stages."""
