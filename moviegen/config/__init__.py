"""Configuration: dataclass sections, one parser for every entry point.

core.py   defaults < YAML < command line, type checks, --help from field docstrings
job.py    the transformer training job (model, text, data, flow, train, parallel, ...)
video.py  the video/image loader's settings (the job's data.video)
tae.py    the TAE training job (reuses train, checkpoint, metrics and parallel)

Importing it loads no torch and none of the data, model or training code (only the model
sizes, moviegen.models.sizes, and the layout names, moviegen.parallel.parallel_dims); a
job's rules that need that code run where the job starts (``checks`` of load_config).
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
                validate: bool = True, checks=None):
    """Defaults < YAML file < command-line overrides of ``cls`` (the training job by
    default), then every section's ``validate`` and ``checks(cfg)``; see
    moviegen/config/core.py."""
    return core.load_config(path, overrides, cls, validate, checks)


def describe(cls: type = JobConfig) -> list[str]:
    """One help line per field of ``cls`` (the training job by default)."""
    return core.describe(cls)
