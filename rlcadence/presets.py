"""Named starting points for ``rlcadence run --preset NAME`` (overrides on top of RLConfig defaults).

``default`` is the README's main job: bootstrap + online GRPO on the embedded task, < 15 min on 2 cores.
The cadence presets are the same experiment at paper A's freshness settings.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "default": {},
    "online": {"sync_every": 1},
    "semi-online": {"sync_every": 10},
    "offline": {"sync_every": "offline"},
    "dpo-online": {"algorithm": "dpo", "sync_every": 1, "ref_sync_every": 1},
    "dpo-semi-online": {"algorithm": "dpo", "sync_every": 10, "ref_sync_every": 10},
    "dpo-offline": {"algorithm": "dpo", "sync_every": "offline"},
    "dash": {"filter": {"tau": 0.1}, "policy_loss": {"aggregation": "token_sum_norm"},
             "advantage": {"unbiased_std": True, "eps": 1e-4}},
    "smoke": {"steps": 3, "prompts_per_step": 8, "group_size": 4, "eval_every": 3, "eval_size": 50,
              "bootstrap": {"steps": 60}},
}
