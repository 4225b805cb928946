"""The ``mf`` router: matrix factorisation over prompt embeddings and structural features (serving: ``router``; trainer: ``training``)."""
