"""Is the Hugging Face Hub usable right now? Asked before a download, to fail in seconds.

Without this, an offline machine spends minutes in the libraries' retries before saying
anything; with it, lathe either reads the local cache only or says the network is needed.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

NETWORK_PROBE_TIMEOUT_S = 3.0


def offline_requested() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set now (possibly after the libraries were imported)."""
    values = (os.environ.get(var, "").upper() for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(value in {"1", "ON", "YES", "TRUE"} for value in values)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable() -> bool:
    """Whether a TCP connection to the hub opens within a few seconds.

    With a proxy configured the direct probe says nothing, so the library is left to try.
    The probe runs in a thread because name resolution ignores socket timeouts.
    """
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    reachable: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname or "", port), timeout=NETWORK_PROBE_TIMEOUT_S).close()
            reachable.append(True)
        except OSError:
            reachable.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(NETWORK_PROBE_TIMEOUT_S)
    return bool(reachable and reachable[0])


def use_token(token: str | None) -> None:
    """The config's `hub_token` for huggingface_hub, which reads HF_TOKEN: set when a command or run starts.

    Never while loading a config (loading changes nothing outside it), and never in the Trainer's
    arguments, which are pickled into every checkpoint.
    """
    if token:
        os.environ["HF_TOKEN"] = token
