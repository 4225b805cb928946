"""The ``bert`` router: a fine-tuned MiniLM classifier plus the structural-feature head.

Serving: ``router``; trainer (``routegate train bert``): ``training``.
"""
