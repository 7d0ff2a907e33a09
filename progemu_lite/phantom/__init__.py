"""Simulated patients: anatomy, findings, their progression, and the texts that describe them."""

from .findings import FINDINGS, PROGRESSION_DIRECTIONS, UnknownFindingError, finding_spec
from .state import ChestState, FindingState

__all__ = [
    "FINDINGS",
    "PROGRESSION_DIRECTIONS",
    "ChestState",
    "FindingState",
    "UnknownFindingError",
    "finding_spec",
]
