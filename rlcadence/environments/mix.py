"""The environments of a run: where each draws its prompts, how it is rewarded, and its share of a step.

A run mixes environments (verifiable: a verifier checks a gold answer; non-verifiable: a scorer grades the
completion). Each step's M prompts are split among environments by weight (largest remainder, the same split
every step), and every prompt's G samples stay together, so GRPO groups and DPO pairs never cross environments.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rlcadence.environments.arithmetic import make_splits, verify_sum
from rlcadence.environments.base import PromptRow
from rlcadence.environments.datasets import RejectedRow, load_prompts
from rlcadence.environments.eval_sets import load_eval_set
from rlcadence.environments.spec import EnvironmentSpec, JudgeSpec  # noqa: F401 - re-exported
from rlcadence.reward_models import normalize_rewards
from rlcadence.verifiers.base import VerifierResult


def split_prompts(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder split of ``total`` prompts by weight (every environment gets at least one)."""
    if total < len(weights):
        raise ValueError(f"prompts_per_step={total} is smaller than the number of environments ({len(weights)})")
    raw = [total * w / sum(weights) for w in weights]
    counts = [max(1, int(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    i = 0
    while sum(counts) < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > total:
        j = max(range(len(counts)), key=lambda k: counts[k])
        counts[j] -= 1
    return counts


@dataclass
class Environment:
    """An environment ready to serve prompts and rewards in this process (verifier pools, loaded files)."""

    spec: EnvironmentSpec
    train_rows: list[PromptRow] | None = None  # dataset environments: all good rows, shuffled by seed
    rejected: list[RejectedRow] = field(default_factory=list)
    eval_rows: dict[str, list[PromptRow]] = field(default_factory=dict)  # eval set name -> its rows, file order
    _scorer: object | None = None
    _split_seed: int = 0
    _digits: int = 3
    _n_heldout: int = 500
    _device: str = "cpu"

    def prompts(self, cursor: int, n: int) -> list[PromptRow]:
        """Prompts ``cursor .. cursor+n`` of this environment's training stream (random access, resumable)."""
        if self.spec.kind == "arithmetic":
            train, _ = make_splits(self._split_seed, self._digits, self._n_heldout)
            return [PromptRow(p.prompt_id, self.spec.name, p.prompt, p.gold) for p in train.batch(cursor, n)]
        if self.spec.kind == "toy_pref":
            from rlcadence.environments.toy_preference import ToyPreferenceEnvironment

            rows = ToyPreferenceEnvironment(seed=self._split_seed).train_prompts(n, start=cursor)
            return [PromptRow(r.prompt_id, self.spec.name, r.prompt, r.gold) for r in rows]
        assert self.train_rows is not None
        rows = self.train_rows
        return [rows[(cursor + i) % len(rows)] for i in range(n)]

    def heldout(self, n: int) -> list[PromptRow]:
        if self.spec.kind == "arithmetic":
            _, held = make_splits(self._split_seed, self._digits, self._n_heldout)
            return [PromptRow(p.prompt_id, self.spec.name, p.prompt, p.gold) for p in held[:n]]
        if self.spec.kind == "toy_pref":
            from rlcadence.environments.toy_preference import ToyPreferenceEnvironment

            return [PromptRow(r.prompt_id, self.spec.name, r.prompt, r.gold)
                    for r in ToyPreferenceEnvironment(seed=self._split_seed).heldout_prompts(n)]
        return []  # user datasets: evaluated on their eval sets (spec.eval_sets), not a held-out split

    def score(self, prompts: list[str], completions: list[str], golds: list[str | None],
              normalize: bool = True) -> list[VerifierResult]:
        """Rewards of the completions; ``normalize=False`` skips ``reward_normalization`` (eval sets report
        raw rewards: a z-scored reward has no pass@k)."""
        if self.spec.kind == "arithmetic":
            results = verify_sum(completions, [g or "" for g in golds])
        elif self.spec.kind == "toy_pref":
            results = self._get_scorer()(prompts, completions)
        elif self.spec.verifier is not None:
            results = self._get_scorer()(completions, [g or "" for g in golds])
        elif self.spec.rewards is not None:
            results = self._combined(completions, [g or "" for g in golds])
        else:
            results = self._get_scorer()(prompts, completions)
        if normalize and self.spec.reward_normalization != "none":
            scaled = normalize_rewards([r.reward for r in results], self.spec.reward_normalization)
            results = [VerifierResult(x, r.detail) for x, r in zip(scaled, results, strict=True)]
        return results

    def _combined(self, completions: list[str], golds: list[str]) -> list[VerifierResult]:
        """Every reward term's verifier, combined with weights (rlcadence.environments.rewards)."""
        from rlcadence.environments.rewards import combine_rewards

        terms = self.spec.rewards or []
        per_term = [scorer(completions, golds) for scorer in self._get_scorer()]  # [K][N]
        combined = combine_rewards([[r.reward for r in t] for t in per_term], [t.weight for t in terms],
                                   self.spec.reward_combination)
        details = ["; ".join(f"{t.verifier}={r.detail}" for t, r in zip(terms, row, strict=True))
                   for row in zip(*per_term, strict=True)]
        return [VerifierResult(x, d) for x, d in zip(combined, details, strict=True)]

    def _get_scorer(self):
        if self._scorer is None:
            if self.spec.kind == "toy_pref":
                from rlcadence.environments.toy_preference import ToyLengthScorer

                self._scorer = ToyLengthScorer()
            elif self.spec.verifier is not None:
                from rlcadence.verifiers.registry import get_verifier

                self._scorer = get_verifier(self.spec.verifier)
            elif self.spec.rewards is not None:
                from rlcadence.verifiers.registry import get_verifier

                self._scorer = [get_verifier(t.verifier) for t in self.spec.rewards]
            elif self.spec.judge is not None:
                self._scorer = _judge_scorer(self.spec.judge, self.spec.device or self._device)
            else:
                from rlcadence.reward_models import SequenceClassifierScorer

                self._scorer = SequenceClassifierScorer(self.spec.reward_model, device=self.spec.device or self._device)
        return self._scorer

    def close(self) -> None:
        for scorer in self._scorer if isinstance(self._scorer, list) else [self._scorer]:
            close = getattr(scorer, "close", None)
            if callable(close):
                close()


def _judge_scorer(spec: JudgeSpec, device: str):
    from rlcadence.engines.hf import TransformersEngine
    from rlcadence.models.source import resolve_model_dir
    from rlcadence.reward_models import JudgeScorer

    engine = TransformersEngine(resolve_model_dir(spec.model), device=device)
    return JudgeScorer(engine, spec.template, spec.parse_regex, spec.max_score, spec.max_new_tokens)


def open_environments(specs: list[EnvironmentSpec], seed: int, split_seed: int, digits: int, n_heldout: int,
               tokenizer=None, max_prompt_tokens: int | None = None, device: str = "cpu",
               positions: int | None = None, training_rows: bool = True) -> list[Environment]:
    """Load every environment; dataset files are validated here (fail or skip-and-record, per source).

    ``max_prompt_tokens``: the length limit of sources that set none (the model's context minus the
    completion budget, :func:`rlcadence.preflight.default_max_prompt_tokens`); ``positions`` (the model's
    context) gives each eval set its own, less its completion budget. ``training_rows=False``: eval sets
    only (`rlcadence eval` needs no training file)."""
    live = []
    for spec in specs:
        env = Environment(spec, _split_seed=split_seed, _digits=digits, _n_heldout=n_heldout, _device=device)
        for eval_set in spec.eval_sets:
            loaded = load_eval_set(spec.eval_source(eval_set), eval_set, tokenizer, positions)
            env.eval_rows[eval_set.name] = loaded.rows
            env.rejected += loaded.rejected
        if spec.kind == "dataset" and training_rows:
            assert spec.source is not None
            loaded = load_prompts(spec.source.model_copy(update={"environment": spec.name}), tokenizer, max_prompt_tokens)
            rows = list(loaded.rows)
            random.Random(seed).shuffle(rows)
            env.train_rows = rows
            env.rejected = list(loaded.rejected) + env.rejected
        live.append(env)
    return live
