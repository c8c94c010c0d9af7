"""`thresher ablate`: proxy LMs trained on candidate sets under one budget, compared on held-out text."""
