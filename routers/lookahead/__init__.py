"""The ``lookahead`` router: a masked LM that predicts every candidate model's answer quality.

Serving: ``router``, ``model``, ``inputs``; trainer (``routegate train lookahead``): ``training``;
the Lookahead-vs-ablation table: ``evaluation``.
"""
