"""The random baseline router: a uniform score per prompt (no checkpoint)."""
