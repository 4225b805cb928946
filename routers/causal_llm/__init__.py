"""The ``causal_llm`` router: a small causal LM's hidden state plus the structural-feature head (serving: ``router``; trainer: ``training``)."""
