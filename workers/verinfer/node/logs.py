"""Structured (key=value) logs for every node process."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "INFO") -> None:
    """One line per event: ``time level logger pid=... message`` on stderr."""
    fmt = "%(asctime)s %(levelname)s %(name)s pid=" + str(os.getpid()) + " %(message)s"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("urllib3", "web3", "celery", "kombu", "transformers", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
