"""The flow `bootstrap`: build the tiny warm-start model when it is missing.

The main command runs it before the first `spark/iterate`; it does nothing when the model
directory exists (the repository ships one under data/tiny-model). Building takes about
12 minutes on 2 CPU cores (docs/research/bootstrap.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.spark_flow import DEFAULT_CONFIG
from spark_core.model.bootstrap import bootstrap as build
from spark_core.config import load_config
from spark_core.rundir import resolve_path


@task(name="build-tiny-model", cache_policy=NO_CACHE)
def build_model(config: Path, out: Path) -> dict:
    return build(load_config(config), out)


@flow(name="bootstrap", log_prints=True)
def bootstrap(config: str = DEFAULT_CONFIG, force: bool = False) -> str:
    """Build the config's `model.path` with its `bootstrap:` recipe unless it already exists."""
    logger = get_run_logger()
    path = resolve_path(config)
    out = resolve_path(load_config(path).model.path)
    if (out / "config.json").is_file() and not force:
        logger.info("model present at %s; nothing to build", out)
        return str(out)
    m = build_model(path, out)
    logger.info("built %s: %d steps, held-out solve accuracy %.3f, judge parse rate %.3f",
                out, m["steps"], m["solve_accuracy"], m["judge_parse_rate"])
    return str(out)


if __name__ == "__main__":
    import argparse

    from flows.local import api_or_ephemeral

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description="Build the tiny model when it is missing.")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    with api_or_ephemeral():
        bootstrap(config=a.config, force=a.force)
