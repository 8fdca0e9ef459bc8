"""`moe_aux_loss_coef`: train a mixture-of-experts model with its router's load-balancing loss.

transformers' MoE causal LMs (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, ...) add
`router_aux_loss_coef x load_balancing_loss` to the loss they return, but only when
`output_router_logits` is on, and it is off in their configs. As in LLaMA-Factory, setting the
option switches it on and sets the coefficient (whatever the config calls it) before the model
is built (the models read it in their constructor). Where the config has no router coefficient
the option could do nothing, so it is refused instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import LatheError

if TYPE_CHECKING:
    from ..config import RunConfig

logger = logging.getLogger(__name__)

# The name each family's config gives the coefficient: transformers' MoE models, then
# DeepSeek's remote code (aux_loss_alpha) and JetMoE (aux_loss_coef).
COEFFICIENT_NAMES = ("router_aux_loss_coef", "aux_loss_alpha", "aux_loss_coef")


def _router_config(config):
    """The (sub-)config holding the router settings: the model's, or its text model's (multimodal)."""
    for each in (config, getattr(config, "text_config", None)):
        if each is not None and any(hasattr(each, name) for name in COEFFICIENT_NAMES):
            return each
    return None


def configure_moe(config, cfg: "RunConfig") -> bool:
    """Set the router loss coefficient and turn router logits on; True when it did.

    Training only (at inference there is no loss to add it to); the config refuses it in the
    stages that compute their own loss from the logits (`Stage.model_loss`, config/validate.py).
    """
    coef = cfg.model.moe_aux_loss_coef
    if coef is None or not cfg.training.do_train:
        return False
    target = _router_config(config)
    if target is None:
        raise LatheError(
            f"`moe_aux_loss_coef` weighs the router's load-balancing loss of a mixture-of-experts model, but "
            f"{cfg.model.model_name_or_path} ({getattr(config, 'model_type', '?')}) has no router coefficient "
            f"in its config ({', '.join(COEFFICIENT_NAMES)}): it is not a MoE model. Remove `moe_aux_loss_coef`."
        )
    for name in COEFFICIENT_NAMES:
        if hasattr(target, name):
            setattr(target, name, coef)
            logger.info("moe_aux_loss_coef: %s = %g, router loss added to the training loss", name, coef)
            break
    if hasattr(target, "output_router_logits"):
        target.output_router_logits = True
    return True
