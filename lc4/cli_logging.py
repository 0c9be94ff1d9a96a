"""Logging set-up shared by the command-line entry points (``lc4``, ``python -m lc4.train``,
``python -m lc4.toy``)."""
from __future__ import annotations

import logging
from typing import Optional

# bitsandbytes (which diffusers imports whenever it is installed) warns at import on machines
# without CUDA that its optional 4-bit CPU kernels are missing; lc4 never uses them.
QUIETED_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def setup_cli_logging(format: Optional[str] = None) -> None:
    """INFO logging with ``format`` when given (else Python's defaults), minus known noise."""
    if format is not None:
        logging.basicConfig(level=logging.INFO, format=format)
    for name in QUIETED_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
