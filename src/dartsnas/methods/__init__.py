"""DARTS and its robust variants behind one interface (ROBUST-SPEC §3, §5). See ``base`` for the hooks."""

from .base import SPACES, Component, EpochContext, Method
from .registry import NB201_PROTOCOLS, PROTOCOLS, REGISTRY, build_method

__all__ = ["NB201_PROTOCOLS", "PROTOCOLS", "REGISTRY", "SPACES", "Component", "EpochContext", "Method", "build_method"]
