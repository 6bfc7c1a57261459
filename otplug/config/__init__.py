"""Declarative OT configs: the native format (``terms`` naming registered components) and the seed format
(``features``), from JSON, TOML or YAML files or mappings. See ``docs/config.md``.

Torch-free: loading a config imports only attrs, cattrs, PyYAML and the registry.
"""

from otplug.config import validators
from otplug.config.load import describe_config, dump_config, load_config
from otplug.config.schema import DEFAULT_REG, DEFAULT_TAU, MIN_REG, OTConfig, TermSpec

__all__ = [
    "DEFAULT_REG",
    "DEFAULT_TAU",
    "MIN_REG",
    "OTConfig",
    "TermSpec",
    "describe_config",
    "dump_config",
    "load_config",
    "validators",
]
