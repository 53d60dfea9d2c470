"""Run a flow from the command line with or without the local server.

Started from the repository root, Prefect reads prefect.toml and talks to the local server on
127.0.0.1:4200. When that server is not running, `api_or_ephemeral` runs the flow against a
temporary in-process one instead (Prefect's ephemeral mode), so `python -m flows.spark_flow`
works either way; with the server up, the flow run shows in its UI.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from deployments.services import http_status

log = logging.getLogger(__name__)


def reachable(api_url: str) -> bool:
    return http_status(api_url.rstrip("/") + "/health") == 200


@contextmanager
def api_or_ephemeral() -> Iterator[None]:
    url = PREFECT_API_URL.value()
    if url and not reachable(url):
        log.info("no Prefect server at %s: using a temporary local one for this run", url)
        PREFECT_HOME.value().mkdir(parents=True, exist_ok=True)  # its database lives there
        with temporary_settings(updates={PREFECT_API_URL: None}):
            yield
    else:
        if not url:
            PREFECT_HOME.value().mkdir(parents=True, exist_ok=True)
        yield
