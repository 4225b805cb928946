"""What ``routegate eval`` and ``calibrate`` share: APGR/CPT metrics, plots, leave-one-out folds, domain families, multi-model cost curves and prices. Never imported by ``routegate serve``."""
