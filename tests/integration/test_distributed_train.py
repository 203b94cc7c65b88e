"""Data-parallel training on 2 real gloo processes equals one process on the whole batch.

One spawn runs four cases (DDP and FSDP2; token_mean, seq_mean_token_mean, token_sum_norm; uneven row
splits, micro-batches cut by rows and by tokens so the ranks pad, mini-batches, PPO epochs, gradient
clipping), each written by rank 0 as an ordinary consolidated checkpoint. Tolerances (float32, measured
under shared load on 2 CPU cores: 1.5e-8 SGD weights, 1.0e-7 AdamW weights, 2.8e-9 Adam moments):
SGD at lr 1 (update = minus the gradient) 1e-7 absolute on every weight, i.e. on every gradient element;
AdamW 5e-7 on the weights and 1e-8 on exp_avg / exp_avg_sq (exp_avg = 0.1 x the clipped gradient).
The same spawn also resumes a one-process checkpoint on 2 FSDP2 ranks (world size 1 -> 2). Every
collective has a 60 s timeout and the spawn a 400 s deadline: a hang fails the test, it never blocks.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcadence.trainer.checkpoint import load_trainer_state
from tests.fixtures.distributed import CASES, run_two_ranks, second_step_one_process, single_process


@pytest.fixture(scope="module")
def dp_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    run_two_ranks(out, deadline_s=400)
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(dp_out, name):
    ref = single_process(name)
    got = AutoModelForCausalLM.from_pretrained(dp_out / name).state_dict()  # world size 1 loads it
    sgd = CASES[name][3]["optimizer"]["name"] == "sgd"
    before = case_weights(name)
    moved = _max_diff(ref["weights"], before)
    assert moved > 1e-4, "the update must change the weights, or equality proves nothing"
    # SGD at lr 1: the weight difference is the gradient difference plus the rounding of w - g; weights are
    # O(1), where one float32 ulp is 1.19e-7, and the all-reduce sums in another order (thread count too)
    assert _max_diff(got, ref["weights"]) <= (2.5e-7 if sgd else 5e-7)
    metrics = torch.load(dp_out / name / "metrics.pt")
    for key in ("loss/policy", "train/grad_norm", "train/entropy", "train/rows_backpropagated"):
        assert metrics[key] == pytest.approx(ref["metrics"][key], rel=1e-5, abs=1e-7), key
    state = load_trainer_state(dp_out / name).optimizer["state"]
    want = ref["optimizer"]["state"]
    assert state.keys() == want.keys()
    for i, s in want.items():
        for k, v in s.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:  # SGD without momentum keeps none
                assert float((state[i][k] - v).abs().max()) <= 1e-8, (i, k)


def case_weights(name: str) -> dict:
    from tests.fixtures.distributed import case_inputs

    return {k: v.detach().clone() for k, v in case_inputs(name)[0].state_dict().items()}


def test_uneven_cases_really_pad():
    """The cases exercise what they claim: ranks with different row and micro-batch counts."""
    from rlcadence.trainer.distributed import DistContext, _backward_plan, rank_rows
    from rlcadence.trainer.update import MicroBatching
    from tests.fixtures.distributed import case_config, case_inputs

    cfg = case_config("ddp_token_mean_micro")
    _, batch, _, kept = case_inputs("ddp_token_mean_micro")
    rows = kept.nonzero().squeeze(1)
    assert [len(rank_rows(rows, r, 2)) for r in range(2)] == [3, 2]
    plans = [_backward_plan(rows, batch.lengths(), MicroBatching.of(cfg), DistContext(r, 2, torch.device("cpu"), "gloo"))
             for r in range(2)]
    assert [len(p) for p in plans] == [2, 2] and plans[1][-1] is None  # rank 1 pads its second backward


def test_one_process_checkpoint_resumes_on_two_ranks(dp_out):
    """World size 1 -> 2: the consolidated format's weights and AdamW moments, sharded by FSDP2 on load,
    give the same second step as one process resuming from it (the tests above cover 2 -> 1)."""
    want = second_step_one_process(dp_out / "one_process")
    got = AutoModelForCausalLM.from_pretrained(dp_out / "resumed_on_2").state_dict()
    first = AutoModelForCausalLM.from_pretrained(dp_out / "one_process").state_dict()
    assert _max_diff(want, first) > 1e-4  # the second step moved the weights
    assert _max_diff(got, want) <= 5e-7
    assert load_trainer_state(dp_out / "resumed_on_2").optimizer["state"][0]["step"] == 4  # 2 updates x ppo_epochs 2
