"""What the routers' trainers share: pairwise comparisons and loss, cached encoder states, fitting the feature head. Never imported by ``routegate serve``."""
