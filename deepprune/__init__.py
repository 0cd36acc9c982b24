"""DeepPrune Lab: the science of pruning redundant parallel reasoning traces (no orchestration here)."""

__version__ = "0.1.0"
