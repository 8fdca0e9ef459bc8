"""Experiment trackers: SwanLab from the `swanlab_*` options, and the run's resolved config sent to every tracker.

transformers' own callbacks (chosen by `report_to`) log the Trainer's arguments and the metrics;
they know nothing of lathe's options (dataset, template, method, LoRA rank...). Like
LLaMA-Factory's ReporterCallback, `ConfigReporter` adds the resolved config, the same dict
as lathe_config.yaml, to each tracker at the start of training, so a run on the dashboard can be
repeated. Secrets never reach a tracker: the config is `RunConfig.to_dict()`, which drops them,
and `tracked_config` drops anything secret-looking that a later option might add.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any, Callable

import yaml
from transformers import TrainerCallback

from ..errors import LatheError
from ..process import is_main_process

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

_LARK_HOOKS: set[str] = set()  # the Lark webhooks registered with swanlab in this process



def check_tracking(cfg: "RunConfig") -> None:
    """Before any work: SwanLab needs its package."""
    if cfg.finetuning.use_swanlab and importlib.util.find_spec("swanlab") is None:
        raise LatheError(f"{cfg.source}: `use_swanlab: true` needs the `swanlab` package: "
                         f"pip install swanlab (or lathe[swanlab]), or set `use_swanlab: false`.")


def tracked_config(cfg: "RunConfig") -> dict[str, Any]:
    """The resolved config as trackers get it: lathe_config.yaml's dict, which holds no secret (SECRET_KEYS)."""
    return cfg.to_dict()


def swanlab_mode(mode: str) -> str:
    """SwanLab's run mode for `swanlab_mode`.

    swanlab >= 0.7 keeps `local` (files for its SwanBoard dashboard) only with the swanboard
    package; without it the same run files are written in `offline` mode (viewable after
    `swanlab sync`, or in SwanBoard once installed), so `local` still works offline.
    """
    if mode == "local" and importlib.util.find_spec("swanboard") is None:
        logger.info("swanlab_mode local: swanboard is not installed, so the run is written in SwanLab's offline mode "
                    "(pip install 'swanlab[dashboard]' for its local dashboard).")
        return "offline"
    return mode


def swanlab_callbacks(cfg: "RunConfig") -> list[TrainerCallback]:
    """SwanLab's own transformers callback, set from the `swanlab_*` options (LLaMA-Factory's get_swanlab_callback)."""
    f = cfg.finetuning
    if not f.use_swanlab:
        return []
    import swanlab
    from swanlab.integration.transformers import SwanLabCallback

    mode = swanlab_mode(f.swanlab_mode)
    if is_main_process():  # SwanLab's run lives on the main process; login and plugins are process-wide
        if f.swanlab_api_key is not None and mode == "cloud":
            swanlab.login(api_key=f.swanlab_api_key)  # the key goes to swanlab alone, never to a log or the config
        if f.swanlab_lark_webhook_url is not None and f.swanlab_lark_webhook_url not in _LARK_HOOKS:
            from swanlab.plugin.notification import LarkCallback

            # swanlab.register_callbacks keeps what it is given for every later run of the process: once per hook
            swanlab.register_callbacks([LarkCallback(webhook_url=f.swanlab_lark_webhook_url, secret=f.swanlab_lark_secret)])
            _LARK_HOOKS.add(f.swanlab_lark_webhook_url)
    kwargs = {"project": f.swanlab_project, "workspace": f.swanlab_workspace, "mode": mode, "tags": ["lathe"],
              "experiment_name": f.swanlab_run_name or cfg.training.run_name}
    if f.swanlab_logdir is not None:
        kwargs["log_dir"] = f.swanlab_logdir
    return [SwanLabCallback(**{k: v for k, v in kwargs.items() if v is not None})]


def _tensorboard(config: dict, callbacks: list) -> None:
    from transformers.integrations import TensorBoardCallback

    text = "\n".join("    " + line for line in yaml.safe_dump(config, sort_keys=False, allow_unicode=True).splitlines())
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            callback.tb_writer.add_text("lathe_config", text)  # indented: TensorBoard shows it as a code block
            callback.tb_writer.flush()


def _wandb(config: dict, callbacks: list) -> None:
    import wandb

    if wandb.run is not None:
        wandb.config.update(config, allow_val_change=True)


def _trackio(config: dict, callbacks: list) -> None:
    import trackio

    trackio.config.update(config)  # its wandb-like config takes no allow_val_change (it would store it as a key)


def _mlflow(config: dict, callbacks: list) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_dict(config, "lathe_config.yaml")  # one artifact: params would hit mlflow's per-run limits


def _swanlab(config: dict, callbacks: list) -> None:
    import swanlab

    swanlab.config.update(config)


# tracker (a `report_to` name, or swanlab for use_swanlab) -> how the config reaches it
CONFIG_WRITERS: dict[str, Callable[[dict, list], None]] = {
    "tensorboard": _tensorboard, "wandb": _wandb, "trackio": _trackio, "mlflow": _mlflow, "swanlab": _swanlab,
}


def config_trackers(cfg: "RunConfig", report_to: list[str]) -> list[str]:
    names = [name for name in report_to if name in CONFIG_WRITERS]
    if cfg.finetuning.use_swanlab and "swanlab" not in names:
        names.append("swanlab")
    return names


class ConfigReporter(TrainerCallback):
    """Sends the resolved config to the run's trackers once they have started (added after their callbacks)."""

    def __init__(self, cfg: "RunConfig", trackers: list[str], callbacks: list) -> None:
        self.config = tracked_config(cfg)
        self.trackers = trackers
        self.callbacks = callbacks  # the Trainer's callback list: the tracker objects live there

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        for name in self.trackers:
            CONFIG_WRITERS[name](self.config, self.callbacks)
            logger.info("Sent the run's config to %s.", name)


def add_config_reporter(trainer, cfg: "RunConfig") -> None:
    """Attach a ConfigReporter after every tracker callback of `trainer`, when the run reports to any."""
    trackers = config_trackers(cfg, list(trainer.args.report_to or []))
    if trackers:
        trainer.add_callback(ConfigReporter(cfg, trackers, trainer.callback_handler.callbacks))
