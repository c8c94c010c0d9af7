"""DoReMi domain reweighting."""
