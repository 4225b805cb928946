"""The ``mf`` router: matrix factorisation over prompt embeddings and structural features.

Serving: ``router``; trainer (``routegate train mf``): ``training``.
"""
