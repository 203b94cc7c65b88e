import math

import torch

from rlcadence.objectives import masked_entropy, masked_token_logprobs, sequence_logprob_sum

# One sequence, T = 3, V = 2. Position 0 logits [0, 0] -> p = [1/2, 1/2];
# position 1 logits [0, ln 3] -> p = [1/4, 3/4]; position 2 predicts past the end (unused for logprobs).
LOGITS = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]])  # [1, 3, 2]
IDS = torch.tensor([[0, 1, 0]])  # targets for positions 0, 1: tokens 1, 0


def test_masked_token_logprobs_hand_values():
    # position 0 -> token 1: log 1/2 = -0.6931472 ; position 1 -> token 0: log 1/4 = -1.3862944
    lp = masked_token_logprobs(LOGITS, IDS)
    torch.testing.assert_close(lp, torch.tensor([[math.log(0.5), math.log(0.25)]]))


def test_masked_token_logprobs_matches_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g).to(torch.bfloat16)
    ids = torch.randint(7, (2, 5), generator=g)
    ref = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = masked_token_logprobs(logits, ids)
    assert out.dtype == torch.float32 and out.shape == (2, 4)
    torch.testing.assert_close(out, ref)


def test_masked_entropy_hand_values():
    # H([1/2, 1/2]) = ln 2 = 0.6931472 ; H([1/4, 3/4]) = 0.25 ln 4 + 0.75 ln(4/3) = 0.3465736 + 0.2157616 = 0.5623351
    # mask [1, 1, 0]: mean over the two valid positions = 0.6277411 (position 2 ignored)
    h = masked_entropy(LOGITS, torch.tensor([[1.0, 1.0, 0.0]]))
    expected = (math.log(2) + 0.25 * math.log(4) + 0.75 * math.log(4 / 3)) / 2
    assert abs(h - expected) < 1e-6
    assert masked_entropy(LOGITS, torch.zeros(1, 3)) == 0.0


def test_sequence_logprob_sum_ignores_padding():
    # row 0: -1 + -2 = -3 ; row 1: -0.5, then padding holding -inf -> -0.5
    lp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, float("-inf"), float("-inf")]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(sequence_logprob_sum(lp, mask), torch.tensor([-3.0, -0.5]))
