"""Text normalisation shared by the stages and the models."""
