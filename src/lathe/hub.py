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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable
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
    Datasets (a dataset_info.json entry's `url_key`) come through the client's dataset class
    instead, which hands back rows (see lathe.data.readers).
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
    url_key: str = ""  # the dataset_info.json key naming a dataset on this hub
    dataset_module: str = ""  # where the client's dataset class lives
    dataset_class: str = ""
    dataset_package: str = ""  # the pip name of the client that has it

    @property
    def load_from(self) -> str:
        """The dataset entry's `load_from` for this hub ("ms_hub"), as LLaMA-Factory names it."""
        return self.url_key.removesuffix("_url")

    def active(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether its switch is on in `environ` (default: this process's environment)."""
        return (os.environ if environ is None else environ).get(self.env, "").lower() in {"1", "true", "yes", "on", "y"}

    def endpoint(self) -> str:
        return next((os.environ[var] for var in self.endpoint_envs if os.environ.get(var)), self.default_endpoint)

    def snapshot_download(self) -> Callable[..., str]:
        return self._client(self.module, "snapshot_download", self.package, f"{self.env}=1 loads models",
                            f"unset {self.env} to use Hugging Face hub ids and local folders")

    def dataset_loader(self) -> Any:
        """The client's dataset class (MsDataset, OmDataset), for dataset_info.json entries on this hub."""
        return self._client(self.dataset_module, self.dataset_class, self.dataset_package, "lathe reads datasets",
                            "download the data and point the entry's 'file_name' at it")

    def _client(self, module: str, attribute: str, package: str, what: str, instead: str) -> Any:
        try:  # the clients import lazily: a missing dependency of theirs surfaces on attribute access
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, RuntimeError) as e:
            lines = [line for line in str(e).splitlines() if line.strip()]  # modelscope's last line names the cause
            missing = getattr(e, "name", None) or (lines[-1] if lines else package)
            raise LatheError(
                f"{what} from {self.name} through its client, which is not installed ({missing}): "
                f"pip install 'lathe[{self.extra}]' (or pip install {package}), or {instead}."
            ) from None


# LLaMA-Factory's order: with both variables set, ModelScope wins.
OTHER_HUBS: tuple[OtherHub, ...] = (
    OtherHub("ModelScope", "USE_MODELSCOPE_HUB", "modelscope", "modelscope", "modelscope.hub.snapshot_download",
             "ms_hub_token", ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"), "https://www.modelscope.cn",
             main_revision="master", url_key="ms_hub_url", dataset_module="modelscope", dataset_class="MsDataset",
             dataset_package="modelscope"),
    OtherHub("Modelers (openMind)", "USE_OPENMIND_HUB", "openmind", "openmind_hub", "openmind_hub",
             "om_hub_token", ("OPENMIND_HUB_ENDPOINT",), "https://modelers.cn",
             url_key="om_hub_url", dataset_module="openmind", dataset_class="OmDataset", dataset_package="openmind"),
)


def other_hub() -> OtherHub | None:
    """The hub that USE_MODELSCOPE_HUB / USE_OPENMIND_HUB select now, if any."""
    return next((hub for hub in OTHER_HUBS if hub.active()), None)


def hub_of(load_from: str) -> OtherHub | None:
    """The other hub a dataset entry's `load_from` ("ms_hub", "om_hub") names; None for the rest."""
    return next((hub for hub in OTHER_HUBS if hub.load_from == load_from), None)


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
