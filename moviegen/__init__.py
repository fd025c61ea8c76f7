"""moviegen: Movie Gen-style text-to-video flow-matching transformer training."""

__version__ = "0.1.0"
