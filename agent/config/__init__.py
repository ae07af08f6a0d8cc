"""Typed configuration: schema, loader (TOML, board overlay, CLI overrides, secrets), pipelines."""

from agent.config.loader import BOARDS_DIR, Secrets, load_config
from agent.config.pipelines import PipelineSpec
from agent.config.schema import AgentConfig, PipelineSection

__all__ = ["BOARDS_DIR", "AgentConfig", "PipelineSection", "PipelineSpec", "Secrets", "load_config"]
