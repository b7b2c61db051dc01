"""The study config: its schema, typed sections, files, checks and audit (one module each)."""
