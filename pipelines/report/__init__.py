"""What a run made: inspect and the HTML report."""
