"""The objectives' knobs; defined in ``rlcadence.objectives_config``, which imports no torch (config validation)."""

from rlcadence.objectives_config import AdvantageConfig, DPOConfig, FilterConfig, PolicyLossConfig

__all__ = ["AdvantageConfig", "DPOConfig", "FilterConfig", "PolicyLossConfig"]
