"""One typed config per run: schema (the options), load (file + overrides), validate (combinations)."""

from .load import RunConfig, build_config, load_config

__all__ = ["RunConfig", "build_config", "load_config"]
