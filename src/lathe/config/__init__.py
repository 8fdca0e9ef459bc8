"""One typed config per run, read without side effects and frozen.

options.py (the option groups: every option, its default, help and constraints), read.py (a
YAML/JSON file and key=value overrides), coercion.py (raw values to the option's type),
training.py (Hugging Face's training arguments), engines.py (DeepSpeed / FSDP as configured),
load.py (routing, building, `RunConfig`), validate.py (rules across options).
"""

from .load import RunConfig, build_config, load_config

__all__ = ["RunConfig", "build_config", "load_config"]
