import os
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
if not BENCHMARKS.is_dir():  # CI clones beside ../shared as well; allow an override
    BENCHMARKS = Path(os.environ.get("SPARK_BENCHMARKS", BENCHMARKS))


@pytest.fixture
def benchmarks() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"shared benchmarks not found at {BENCHMARKS} (set SPARK_BENCHMARKS)")
    return BENCHMARKS
