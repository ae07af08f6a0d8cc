"""Typed configuration: schema, loader (TOML, board overlay, CLI overrides, secrets), pipelines
(with their lines, zones and detection interval)."""

from agent.config.loader import BOARDS_DIR, Secrets, load_config
from agent.config.pipelines import AnalyticsSpec, PipelineSpec
from agent.config.schema import AgentConfig, PipelineSection

__all__ = ["BOARDS_DIR", "AgentConfig", "AnalyticsSpec", "PipelineSection", "PipelineSpec", "Secrets",
           "load_config"]
