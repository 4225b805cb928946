"""The ``causal_llm`` router: a small causal LM's label-token logits plus the structural-feature head.

Serving: ``router``; trainer (``routegate train causal_llm``): ``training``.
"""
