"""torch.profiler over chosen optimizer steps: a Chrome / Perfetto trace of where a step's time goes.

`enable_torch_profiler` runs `torch.profiler.profile` with a wait / warmup / active / repeat
schedule stepped once per optimizer step, as LLaMA-Factory's profiler callback does; each
recorded cycle is written by torch's `tensorboard_trace_handler` to
`profiler_output_dir/rank_<N>/*.pt.trace.json` (opens in https://ui.perfetto.dev,
chrome://tracing or TensorBoard's profiler plugin). `profile_modules` labels the forward pass of
the named modules in that trace (one `record_function` range each), so a layer's share of the
step is one box in the timeline instead of a scatter of aten ops.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from ..errors import LatheError

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

LABEL_PREFIX = "module: "  # a labelled forward appears in the trace as "module: model.layers.0.mlp"


def check_profiler(cfg: "RunConfig") -> None:
    """`profile_modules` labels ranges of the profiler's trace: without the profiler it would do nothing."""
    if cfg.run.profile_modules and not cfg.run.enable_torch_profiler:
        raise LatheError(f"{cfg.source}: `profile_modules` labels module forwards in the torch.profiler trace; "
                         f"set `enable_torch_profiler: true` too, or remove `profile_modules`.")


def profiler_dir(cfg: "RunConfig") -> Path:
    return Path(cfg.run.profiler_output_dir or Path(cfg.training.output_dir) / "profiler")


def matching_modules(model, patterns: str) -> dict[str, Any]:
    """The modules named by a comma list of names or fnmatch patterns.

    A pattern matches a module's full dotted name (`model.layers.*.mlp`) or its tail
    (`mlp`, `layers.0.self_attn`), so the same list works on a plain model and under a PEFT
    wrapper that prefixes every name with `base_model.model.`.
    """
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    found = {name: module for name, module in model.named_modules()
             if name and any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, f"*.{p}") for p in wanted)}
    if not found:
        examples = [name for name, _ in model.named_modules() if name][:8]
        raise LatheError(f"`profile_modules: {patterns}` matches no module of the model. Names look like: "
                         f"{', '.join(examples)} (fnmatch patterns such as `*.layers.0.mlp` work too).")
    return found


class ModuleLabels:
    """Forward hooks that open a `record_function` range when a module's forward starts and close it when it ends.

    Outside a profiled step a range costs a few microseconds and records nothing.
    """

    def __init__(self, modules: dict[str, Any]) -> None:
        import torch

        self.handles = []
        self.open: dict[str, list] = {}
        for name, module in modules.items():
            label = LABEL_PREFIX + name

            def enter(mod, args, label=label):
                scope = torch.profiler.record_function(label)
                scope.__enter__()
                self.open.setdefault(label, []).append(scope)

            def leave(mod, args, output, label=label):
                stack = self.open.get(label)
                if stack:
                    stack.pop().__exit__(None, None, None)

            self.handles.append(module.register_forward_pre_hook(enter))
            self.handles.append(module.register_forward_hook(leave))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def current_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class TorchProfilerCallback(TrainerCallback):
    """Starts torch.profiler when training begins, steps its schedule after each optimizer step, stops it at the end."""

    def __init__(self, cfg: "RunConfig", model) -> None:
        self.options = cfg.run
        self.trace_dir = profiler_dir(cfg) / f"rank_{current_rank()}"
        self.labels = ModuleLabels(matching_modules(model, cfg.run.profile_modules)) if cfg.run.profile_modules else None
        self.profiler = None

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        o = self.options
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=o.profiler_wait_steps, warmup=o.profiler_warmup_steps,
                                             active=o.profiler_active_steps, repeat=o.profiler_repeat),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.trace_dir)),
            record_shapes=o.profiler_record_shapes,
            profile_memory=o.profiler_profile_memory,
            with_stack=o.profiler_with_stack,
        )
        self.profiler.start()
        first = state.global_step + o.profiler_wait_steps + o.profiler_warmup_steps + 1
        logger.info("torch.profiler: wait %d, warmup %d, active %d step(s), %s; first recorded step %d; traces in %s",
                    o.profiler_wait_steps, o.profiler_warmup_steps, o.profiler_active_steps,
                    f"{o.profiler_repeat} cycle(s)" if o.profiler_repeat else "cycles until training ends",
                    first, self.trace_dir)

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.step()

    def on_train_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.stop()  # a cycle cut short by the end of training is written too
            self.profiler = None
            traces = sorted(self.trace_dir.glob("*.pt.trace.json"))
            if traces:
                logger.info("torch.profiler wrote %d trace(s) to %s (open in https://ui.perfetto.dev)",
                            len(traces), self.trace_dir)
            else:
                logger.warning("torch.profiler recorded no step: training ended within the first %d "
                               "(profiler_wait_steps + profiler_warmup_steps) steps.",
                               self.options.profiler_wait_steps + self.options.profiler_warmup_steps)
        if self.labels is not None:
            self.labels.remove()


def profiler_callbacks(cfg: "RunConfig", model) -> list[TrainerCallback]:
    return [TorchProfilerCallback(cfg, model)] if cfg.run.enable_torch_profiler else []
