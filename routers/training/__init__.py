"""What the routers' trainers share: pairwise comparisons and loss, cached encoder states, fitting
the structural-feature head. ``routegate serve`` never imports it (tests/test_layout.py)."""
