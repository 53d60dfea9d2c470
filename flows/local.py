"""Run a flow from the command line with or without the local server.

Started from the repository root, Prefect reads prefect.toml and talks to the local server on
127.0.0.1:4200. When that server is not running, `api_or_ephemeral` runs the flow against a
temporary in-process one instead (Prefect's ephemeral mode), so `python -m flows.spark_flow`
works either way; with the server up, the flow run shows in its UI.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator

from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

log = logging.getLogger(__name__)


def http_status(url: str, timeout: float = 2.0) -> int:
    """The HTTP status of a GET (0: nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


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
