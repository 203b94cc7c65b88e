"""What a run looks like to a person: the summary text, the curves and the HTML report.

Plain functions of metric rows (``{"step": 3, "reward_mean": 0.4, ...}``, the ``metrics`` table's columns);
no Prefect, no store access. matplotlib is needed only by :mod:`.plots`.
"""
