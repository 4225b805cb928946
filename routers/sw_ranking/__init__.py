"""The ``sw_ranking`` router: similarity-weighted Bradley-Terry ratings over training battles.

Serving: ``router``; trainer (``routegate train sw_ranking``): ``training``.
"""
