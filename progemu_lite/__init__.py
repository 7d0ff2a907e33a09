"""ProgEmu-Lite: interpretable counterfactual generation on chest X-rays, for teaching and research."""

__version__ = "0.1.0"
