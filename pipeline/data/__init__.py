"""Prompt data: curation rules, the colour palette, text rendering, image helpers, split agreement."""
