"""Hostile configs, generated: the loader accepts a config or refuses it with a LatheError naming a key.

Hypothesis draws real option names (lathe's groups, the Trainer's arguments, pending
LLaMA-Factory options) and a few strangers, with values of every wrong type: huge numbers,
NaN, unicode, empty strings, nested lists and dicts. Nothing but a LatheError may escape,
and its message must name one of the keys given, so the user knows what to fix.
Examples: LATHE_HYPOTHESIS_EXAMPLES (CI default below; docs/reliability.md uses 10,000).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lathe.config import build_config
from lathe.config.load import all_option_names
from lathe.config.pending import PENDING
from lathe.errors import LatheError

EXAMPLES = int(os.environ.get("LATHE_HYPOTHESIS_EXAMPLES", "300"))
NAMES = sorted(all_option_names() | set(PENDING)) + ["learning_rat", "lora_rnk", "", "模型", "warmup_ratio"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["", "auto", "lora", "full", "sft", "dpo", "no", "steps", "1e-4", "-1",
                                           "0", "all", "true", "q_proj", "nan", "inf"]),
)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                      max_size=3), max_leaves=4)
configs = st.dictionaries(st.sampled_from(NAMES), scalars | junk, min_size=1, max_size=6)
BASE = {"model_name_or_path": "some/model", "output_dir": "/tmp/lathe-property-out"}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(configs, st.booleans(), st.sampled_from(["train", "infer"]))
def test_loader_raises_only_lathe_errors_naming_a_key(raw, with_base, purpose):
    config = {**BASE, **raw} if with_base else raw
    try:
        build_config(config, source="generated.yaml", purpose=purpose)
    except LatheError as e:
        message = str(e)
        named = [k for k in config if (k.strip() and k in message) or (not k.strip() and "empty name" in message)]
        assert named or "model_name_or_path" in message or "output_dir" in message, message
