"""The bootstrap's lr schedule: warm-up, peak, linear anneal to 0 ending at the (possibly early) end step."""

import pytest

from rlcadence.config import BootstrapConfig
from rlcadence.models.bootstrap import bootstrap_lr


def test_warmup_peak_anneal_by_hand():
    cfg = BootstrapConfig(lr=1e-3, warmup_steps=4, anneal_steps=5)
    lrs = [bootstrap_lr(s, 20, cfg) for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # (s+1)/4
    assert lrs[4:15] == pytest.approx([1e-3] * 11)  # peak until end - anneal = 15
    assert lrs[15:] == pytest.approx([1e-3 * k / 5 for k in (5, 4, 3, 2, 1)])  # (end - s)/5, last > 0


def test_early_end_moves_the_anneal():
    """When the validation target is reached at step 8, end becomes 8 + anneal and the decay starts at 8."""
    cfg = BootstrapConfig(lr=1.0, warmup_steps=0, anneal_steps=4)
    assert [bootstrap_lr(s, 12, cfg) for s in range(7, 12)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])


def test_short_runs_anneal_from_the_start():
    """steps < anneal_steps (tests' 30-step bootstraps): the whole run decays, min with the warm-up."""
    cfg = BootstrapConfig(lr=1.0, warmup_steps=2, anneal_steps=50)
    assert [bootstrap_lr(s, 4, cfg) for s in range(4)] == pytest.approx([0.5, 0.75, 0.5, 0.25])
