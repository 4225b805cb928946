"""What ``routegate eval`` and ``calibrate`` share: APGR/CPT metrics, plots, leave-one-out folds,
domain families, multi-model cost curves and list prices. ``routegate serve`` never imports it
(tests/test_layout.py)."""
