"""The ``sw_ranking`` router: a pair's outcomes on the most similar training prompts (``routers/neighbours.py``).

Serving: ``router``; trainer (``routegate train sw_ranking``): ``training``.
"""
