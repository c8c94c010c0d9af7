"""Getting data in and out: readers of raw files, and export."""
