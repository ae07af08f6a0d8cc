"""Typed configuration: schema, loader (TOML, board overlay, CLI overrides, secrets)."""

from agent.config.loader import BOARDS_DIR, Secrets, load_config
from agent.config.schema import AgentConfig

__all__ = ["BOARDS_DIR", "AgentConfig", "Secrets", "load_config"]
