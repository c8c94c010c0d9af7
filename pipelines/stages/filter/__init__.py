"""Keeping rows by conditions and global top fractions."""
