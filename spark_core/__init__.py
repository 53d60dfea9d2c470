"""SPARK's library: the pipeline's stages and everything they call (no Prefect here)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository root: relative model and config paths, data/ and ../shared are found from it."""
