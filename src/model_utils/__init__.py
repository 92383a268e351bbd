"""Configuration and platform helpers of the training package."""
from .config import Config, ConfigError, load_config, make_config

__all__ = ["Config", "ConfigError", "load_config", "make_config"]
