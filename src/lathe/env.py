"""`lathe env`: what a bug report needs to know about this machine."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers", "bitsandbytes", "deepspeed", "gradio")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def env_report() -> str:
    import torch

    from . import __version__

    rows = [("lathe", __version__), ("platform", platform.platform()), ("python", platform.python_version())]
    rows += [(name, _version(name)) for name in PACKAGES]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("device", f"cuda x{torch.cuda.device_count()} ({names})"))
    else:
        rows.append(("device", f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"- {k.ljust(width)}  {v}" for k, v in rows)
