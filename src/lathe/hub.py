"""Where a model comes from: is the Hugging Face Hub usable right now (asked before a download,
to fail in seconds), and the ModelScope / Modelers hubs that LLaMA-Factory's USE_*_HUB switch on.

Without this, an offline machine spends minutes in the libraries' retries before saying
anything; with it, lathe either reads the local cache only or says the network is needed.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

from .errors import LatheError

if TYPE_CHECKING:
    from .config.options import ModelArguments

logger = logging.getLogger(__name__)

NETWORK_PROBE_TIMEOUT_S = 3.0


def offline_requested() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set now (possibly after the libraries were imported)."""
    values = (os.environ.get(var, "").upper() for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(value in {"1", "ON", "YES", "TRUE"} for value in values)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(url_text: str | None = None) -> bool:
    """Whether a TCP connection to the hub (`url_text`, else the Hugging Face endpoint) opens within a few seconds.

    With a proxy configured the direct probe says nothing, so the library is left to try.
    The probe runs in a thread because name resolution ignores socket timeouts.
    """
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(url_text or endpoint())
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


@dataclass(frozen=True)
class OtherHub:
    """A model hub besides Hugging Face, switched on by an environment variable as in LLaMA-Factory.

    Its client package downloads a snapshot into the hub's own cache; transformers then loads
    that folder like any local model, so nothing past the download knows which hub it came from.
    """

    name: str
    env: str  # USE_..._HUB: on when 1/true/yes
    extra: str  # lathe's optional extra that installs the client
    package: str  # the client's pip name
    module: str  # where the client's snapshot_download lives
    token_key: str  # the config option holding this hub's token
    endpoint_envs: tuple[str, ...]  # where the client reads its endpoint, first set wins
    default_endpoint: str
    main_revision: str = "main"  # the default branch's name there ("main" in the config means it)

    def active(self) -> bool:
        return os.environ.get(self.env, "").lower() in {"1", "true", "yes", "on", "y"}

    def endpoint(self) -> str:
        return next((os.environ[var] for var in self.endpoint_envs if os.environ.get(var)), self.default_endpoint)

    def snapshot_download(self) -> Callable[..., str]:
        try:
            module = importlib.import_module(self.module)
        except ImportError as e:
            raise LatheError(
                f"{self.env}=1 loads models from {self.name} through its client, which is not installed "
                f"({e.name or self.package}): pip install 'lathe[{self.extra}]' (or pip install {self.package}), "
                f"or unset {self.env} to use Hugging Face hub ids and local folders."
            ) from None
        return module.snapshot_download


# LLaMA-Factory's order: with both variables set, ModelScope wins.
OTHER_HUBS: tuple[OtherHub, ...] = (
    OtherHub("ModelScope", "USE_MODELSCOPE_HUB", "modelscope", "modelscope", "modelscope.hub.snapshot_download",
             "ms_hub_token", ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"), "https://www.modelscope.cn",
             main_revision="master"),
    OtherHub("Modelers (openMind)", "USE_OPENMIND_HUB", "openmind", "openmind_hub", "openmind_hub",
             "om_hub_token", ("OPENMIND_HUB_ENDPOINT",), "https://modelers.cn"),
)


def other_hub() -> OtherHub | None:
    """The hub that USE_MODELSCOPE_HUB / USE_OPENMIND_HUB select now, if any."""
    return next((hub for hub in OTHER_HUBS if hub.active()), None)


_SNAPSHOTS: dict[tuple[str, str, str, str | None], str] = {}  # one download per model and process


def model_snapshot(m: "ModelArguments") -> str:
    """`model_name_or_path`, or, with another hub switched on and a hub id there, its downloaded folder.

    The token goes to the client's call only: it is never logged, put in the environment, or
    saved by a login. Offline (hub unreachable within seconds) only the client's cache is read,
    so a cached snapshot still loads and a missing one fails at once with a message.
    """
    name = m.model_name_or_path or ""
    hub = other_hub()
    if hub is None or not name or os.path.exists(os.path.expanduser(name)):
        return name
    revision = hub.main_revision if m.model_revision == "main" else m.model_revision
    key = (hub.env, name, revision, m.cache_dir)
    if key in _SNAPSHOTS:
        return _SNAPSHOTS[key]
    download = hub.snapshot_download()
    token = getattr(m, hub.token_key)
    online = hub_reachable(hub.endpoint())
    try:
        folder = download(name, revision=revision, cache_dir=m.cache_dir, token=token, local_files_only=not online)
    except Exception as e:  # the clients raise their own error types (HTTP, not found, cache miss)
        reason = (str(e).splitlines() or [repr(e)])[0]
        where = (f"{hub.endpoint()} cannot be reached from here and no cached snapshot was found"
                 if not online else f"{hub.name} refused or failed the download")
        raise LatheError(
            f"Could not download the model `{name}` (revision {revision}) from {hub.name} ({hub.env}=1): {where}: "
            f"{reason}. Check the id and `{hub.token_key}` for a private model, or download it elsewhere and set "
            f"`model_name_or_path` to its folder."
        ) from None
    logger.info("%s: model %s (revision %s) is in %s", hub.name, name, revision, folder)
    _SNAPSHOTS[key] = str(folder)
    return str(folder)
