"""Scorers: what is computed about an item (prompts, tokens read, how answers become columns)."""
