"""The Safer-Instruct data pipeline: collect → reverse model → induce → filter → respond → self-evaluate → assemble."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safer_instruct.pipeline.assemble import load_preferences
    from safer_instruct.pipeline.config import PipelineConfig, load_pipeline_config
    from safer_instruct.pipeline.runner import BuildResult, build, build_from_file

__all__ = ["BuildResult", "PipelineConfig", "build", "build_from_file", "load_pipeline_config", "load_preferences"]
_HOMES = {
    "load_preferences": "assemble",
    "PipelineConfig": "config",
    "load_pipeline_config": "config",
    "BuildResult": "runner",
    "build": "runner",
    "build_from_file": "runner",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"safer_instruct.pipeline.{_HOMES[name]}"), name)
    raise AttributeError(name)
