"""Similarity-weighted ranking (RouteLLM's SW ranking) for any pair of the models in its data:
the strong model's win probability is the sigmoid of the pair's margin over the training prompts
nearest the prompt (``routers/neighbours.py``). The trainer is ``routers/sw_ranking/training.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from routers.base import Router, win_probabilities
from routers.checkpoint import UnscoredPairError, model_indices, read_manifest
from routers.embedding import encode
from routers.features import feature_matrix
from routers.neighbours import NeighbourTable
from routers.registry import RouterOptions


class SWRankingRouter(Router):
    """Scores prompts by how the strong model fared against the weak one on similar training prompts."""

    name = "sw_ranking"

    def __init__(self, directory: Path, device: str, strong_model: str, weak_model: str) -> None:
        manifest = read_manifest(directory, self.name)
        self.models: list[str] = manifest["models"]
        model_indices(self.models, strong_model, weak_model, directory)  # CheckpointError naming unknown models
        tau, ridge = float(manifest["tau"]), float(manifest["ridge"])
        neighbours = NeighbourTable.load(directory).pair(strong_model, weak_model, tau, ridge)
        if neighbours is None:
            raise UnscoredPairError(
                f"the checkpoint in {directory} has no training prompt on which both {strong_model!r} and "
                f"{weak_model!r} were scored; choose a pair scored together in its data_files"
            )
        self._neighbours = neighbours
        self._device = device

    @classmethod
    def from_options(cls, options: RouterOptions) -> SWRankingRouter:
        """Registry factory: load ``<checkpoint_dir>/sw_ranking``."""
        return cls(Path(options.checkpoint_dir) / cls.name, options.device, options.strong_model, options.weak_model)

    def score(self, prompts: Sequence[str]) -> list[float]:
        return win_probabilities(self._neighbours.margins(encode(prompts, self._device), feature_matrix(prompts)))
