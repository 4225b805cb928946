"""The ``bert`` router: a fine-tuned BERT classifier plus the structural-feature head (serving: ``router``; trainer: ``training``)."""
