"""A causal LM with a scalar value head: the reward model of `stage: rm` (and PPO's critic).

The score of a sequence is the head's output at its last real token. Saved as the backbone
(a LoRA adapter or a full model, with `save_pretrained`) plus `value_head.safetensors`, so
the backbone still reloads with plain peft/transformers and the head is one small file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import LatheError
from .adapters.common import base_model

HEAD_FILE = "value_head.safetensors"
CONFIG_FILE = "value_head.json"


def _config(backbone):
    base = base_model(backbone)
    return base.config


def make_value_head(hidden: int) -> torch.nn.Linear:
    """A scalar head starting near 0, so the first values and rewards are small."""
    head = torch.nn.Linear(hidden, 1)
    torch.nn.init.normal_(head.weight, std=1.0 / (hidden + 1))
    torch.nn.init.zeros_(head.bias)
    return head


def hidden_size(model) -> int:
    config = _config(model)
    return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size


class ValueHeadModel(torch.nn.Module):
    def __init__(self, backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.v_head = make_value_head(hidden_size(backbone))
        self.config = _config(backbone)  # the Trainer reads model.config

    def forward(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """Scores [B]: the value at each sequence's last non-padding token (right padding)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.backbone(  # kwargs: a multimodal backbone's media tensors
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, **kwargs
        )
        hidden = out.hidden_states[-1]
        values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)
        last = attention_mask.sum(-1).clamp(min=1) - 1
        return values[torch.arange(values.shape[0], device=values.device), last]

    # ------------------------------------------------------------ saving and loading

    def save_pretrained(self, folder: str | Path, **kwargs) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder, **kwargs)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.v_head.state_dict().items()}, folder / HEAD_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({"kind": "lathe-value-head", "hidden_size": self.v_head.in_features}))

    def load_weights(self, folder: str | Path) -> None:
        """Load backbone (adapter or full) and head weights saved by `save_pretrained` (for resuming)."""
        folder = Path(folder)
        if (folder / "adapter_model.safetensors").exists():
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.backbone, load_file(folder / "adapter_model.safetensors"))
        else:
            from transformers.modeling_utils import load_state_dict

            files = sorted(folder.glob("model*.safetensors"))
            if not files:
                raise LatheError(f"{folder} holds no model or adapter weights to resume the reward model from.")
            state = {}
            for f in files:
                state.update(load_state_dict(str(f)))
            self.backbone.load_state_dict(state, strict=False)
        self.v_head.load_state_dict(load_file(folder / HEAD_FILE))


def load_reward_model(folder: str | Path, base_model: str | None = None, dtype=torch.float32) -> ValueHeadModel:
    """A saved reward model: the adapter on its base (from adapter_config.json) or a full model, plus the head."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / HEAD_FILE).exists():
        raise LatheError(f"{folder} is not a lathe reward model: {HEAD_FILE} is missing (train one with `stage: rm`).")
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        base = base_model or json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        backbone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), folder)
    else:
        backbone = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = ValueHeadModel(backbone)
    model.v_head.load_state_dict(load_file(folder / HEAD_FILE))
    return model.eval()
