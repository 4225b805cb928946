"""The ``sw_ranking`` router: similarity-weighted Bradley-Terry ranking over training battles (serving: ``router``; trainer: ``training``)."""
