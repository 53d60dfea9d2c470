import os
import tempfile
from pathlib import Path

# Before anything imports Prefect: its home (profiles, local results) goes to a throwaway
# folder, not ~/.prefect or the repository's data/prefect (prefect.toml), and no telemetry.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="spark-test-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# Shared format warm-ups (spark_core/model/shared_warmup.py) go to a throwaway folder too, never beside
# the repository's data/tiny-model; a test that checks the sharing sets its own.
os.environ["SPARK_WARMUP_DIR"] = tempfile.mkdtemp(prefix="spark-test-warmups-")

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
if not BENCHMARKS.is_dir():  # CI clones beside ../shared as well; allow an override
    BENCHMARKS = Path(os.environ.get("SPARK_BENCHMARKS", BENCHMARKS))


@pytest.fixture
def benchmarks() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"shared benchmarks not found at {BENCHMARKS} (set SPARK_BENCHMARKS)")
    return BENCHMARKS


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect server (SQLite in a temp dir) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
