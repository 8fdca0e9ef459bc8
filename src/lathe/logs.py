"""How lathe's commands log: lathe's own lines on stderr as `[lathe] ...`, the libraries' only when they matter."""

from __future__ import annotations

import logging
import sys


def setup_logging() -> None:
    """Called once by each command (and by the bench worker) before any work."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("lathe").setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[lathe] %(message)s"))
    lathe_logger = logging.getLogger("lathe")
    lathe_logger.handlers = [handler]
    lathe_logger.propagate = False
    # Optional quantization packages announce, at every import of transformers, kernels this
    # machine cannot load (torchao's CUDA builds, bitsandbytes' hub kernel: both fall back to
    # working code) and deprecations meant for their authors.
    for noisy in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
