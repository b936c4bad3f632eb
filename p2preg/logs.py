"""Log set-up for node processes: stderr, timestamps, level and the short node id on every line."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s {node} %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def short_id(node_id: int) -> str:
    """The first 8 hex digits: enough to tell the peers of a ring apart in logs and tables."""
    return f"{node_id:032x}"[:8]


def setup_logging(level: str, node_id: int | None = None) -> None:
    """(Re)configure the root logger; called again once the node id is known."""
    node = short_id(node_id) if node_id is not None else "--------"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT.format(node=node), DATE_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log would drown the overlay's own lines at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
