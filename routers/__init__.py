"""Routers: a batch of prompts in, the strong model's win probability out."""

from routers.base import Router
from routers.registry import available_routers, load_router

__all__ = ["Router", "available_routers", "load_router"]
