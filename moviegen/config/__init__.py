"""Configuration: dataclass sections, one parser for every entry point.

core.py  defaults < YAML < command line, type checks, --help from field docstrings
job.py   the transformer training job (model, text, data, flow, train, parallel, ...)
tae.py   the TAE training job (reuses train, checkpoint, metrics and parallel)
"""
from moviegen.config import core
from moviegen.config.core import (ConfigError, build_dataclass, check, check_choice,
                                  parse_args, parse_overrides, run_cli, to_dict)
from moviegen.config.job import (CheckpointConfig, DataConfig, FlowConfig, JobConfig,
                                 MetricsConfig, ModelConfig, ParallelConfig, TextConfig,
                                 TextEncoderConfig, TrainConfig)
from moviegen.config.tae import TAEDataConfig, TAEJobConfig, TAELossConfig

__all__ = ["CheckpointConfig", "ConfigError", "DataConfig", "FlowConfig", "JobConfig",
           "MetricsConfig", "ModelConfig", "ParallelConfig", "TAEDataConfig", "TAEJobConfig",
           "TAELossConfig", "TextConfig", "TextEncoderConfig", "TrainConfig",
           "build_dataclass", "check", "check_choice", "describe", "load_config", "parse_args",
           "parse_overrides", "run_cli", "to_dict"]


def load_config(path: str | None, overrides: list[str] | None = None, cls: type = JobConfig,
                validate: bool = True):
    """Defaults < YAML file < command-line overrides of ``cls`` (the training job by
    default), then every section's ``validate``; see moviegen/config/core.py."""
    return core.load_config(path, overrides, cls, validate)


def describe(cls: type = JobConfig) -> list[str]:
    """One help line per field of ``cls`` (the training job by default)."""
    return core.describe(cls)
