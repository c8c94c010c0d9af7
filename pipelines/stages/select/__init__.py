"""Instruction selection: MoDS and LESS."""
