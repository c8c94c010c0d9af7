"""Quality classifiers: train and score."""
