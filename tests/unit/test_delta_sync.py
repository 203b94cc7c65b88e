"""Delta weight sync: unchanged tensors skipped, sparse ones as (gap-coded index, value) pairs, dense ones whole,
and the generator's copy after applying a delta bitwise equal to a full sync's."""

from __future__ import annotations

import pytest
import torch

from rlcadence.engines.delta import apply_delta, compute_delta, full_nbytes, gaps_of, positions_of


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(1000, generator=g), "b": torch.randn(10, 10, generator=g), "c": torch.randn(4, generator=g)}


def test_skip_sparse_and_dense_with_hand_counted_bytes():
    old = _weights()
    prev = {k: v.to(torch.bfloat16) for k, v in old.items()}
    new = {k: v.clone() for k, v in old.items()}
    new["a"][[3, 500, 999]] += 1.0  # 3 of 1000 elements change in bf16: sparse
    new["b"] += 1.0  # all 100 change: dense (pairs would cost at least 100 x 3 bytes > 200)
    new["c"] *= 1 + 2**-12  # below bf16 resolution (8 mantissa bits): unchanged after the cast
    delta = compute_delta(prev, new, torch.bfloat16)
    assert delta.unchanged == ["c"]
    assert list(delta.dense) == ["b"]
    gaps, val = delta.sparse["a"]
    assert gaps.tolist() == [3, 497, 499] and gaps.dtype == torch.uint16 and val.dtype == torch.bfloat16
    assert positions_of(gaps).tolist() == [3, 500, 999]
    assert delta.nbytes == 3 * (2 + 2) + 100 * 2  # uint16 gap (largest 499 > 255) + bf16 value; b whole in bf16
    assert delta.changed_elements == 103 and delta.elements == 1104
    assert full_nbytes(new, torch.bfloat16) == 1104 * 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_delta_then_apply_equals_full_sync_bitwise(dtype):
    prev_fp32 = _weights(1)
    generator = {k: v.to(dtype) for k, v in prev_fp32.items()}  # the generator's copy after the last sync
    new = {k: v + 1e-3 * torch.randn_like(v) * (torch.rand_like(v) < 0.05) for k, v in prev_fp32.items()}
    new["a"][7] = -0.0 if float(new["a"][7]) == 0.0 else new["a"][7]
    changed = apply_delta(generator, compute_delta(generator, new, dtype))
    assert changed  # something moved
    for name, tensor in new.items():
        full = tensor.to(dtype)
        assert torch.equal(generator[name].view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           full.view(torch.int16 if dtype == torch.bfloat16 else torch.int32)), name


def test_negative_zero_counts_as_a_change():
    prev = {"w": torch.zeros(8)}
    new = {"w": torch.zeros(8)}
    new["w"][2] = -0.0
    delta = compute_delta(prev, new, torch.float32)
    assert positions_of(delta.sparse["w"][0]).tolist() == [2]


@pytest.mark.parametrize(("positions", "dtype"), [([0, 255, 510], torch.uint8), ([5, 70_000], torch.int32),
                                                   ([256], torch.uint16), ([2**31 + 7], torch.int64)])
def test_gaps_take_the_narrowest_type_that_holds_the_largest(positions, dtype):
    gaps = gaps_of(torch.tensor(positions))
    assert gaps.dtype == dtype  # largest gap 255 -> uint8; 69,995 -> int32; 256 -> uint16; > 2^31 -> int64
    assert positions_of(gaps).tolist() == positions


def test_a_tensor_goes_whole_once_its_pairs_cost_as_much():
    prev = {"w": torch.zeros(300, dtype=torch.bfloat16)}
    new = {"w": torch.zeros(300)}
    new["w"][::3] = 1.0  # 100 of 300 change, gaps of 3 (uint8): 100 x (1 + 2) = 300 bytes < 600 dense
    assert "w" in compute_delta(prev, new, torch.bfloat16).sparse
    new["w"][1::3] = 1.0  # 200 of 300: 200 x 3 = 600 bytes, no smaller than the tensor: whole
    delta = compute_delta(prev, new, torch.bfloat16)
    assert list(delta.dense) == ["w"] and delta.changed_elements == 200  # sent whole, but 100 did not change


def test_mismatched_names_and_shapes_fail_naming_them():
    with pytest.raises(KeyError, match="missing \\['b'\\]"):
        compute_delta({"a": torch.zeros(2), "b": torch.zeros(2)}, {"a": torch.zeros(2)}, torch.float32)
    with pytest.raises(ValueError, match="a is \\(3,\\)"):
        compute_delta({"a": torch.zeros(2)}, {"a": torch.zeros(3)}, torch.float32)


def test_delta_file_round_trip_moves_the_delta_bytes(tmp_path):
    from rlcadence.engines.delta import read_delta, write_delta

    prev = {k: v.to(torch.bfloat16) for k, v in _weights(2).items()}
    new = {k: v.float().clone() for k, v in prev.items()}
    new["a"][[1, 2, 900]] += 1.0
    new["b"] += 1.0
    delta = compute_delta(prev, new, torch.bfloat16)
    size = write_delta(delta, tmp_path / "d.safetensors", base_version=3, version=4)
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside it
    assert delta.nbytes <= size <= delta.nbytes + 1024  # the pairs and dense tensors, plus a JSON header
    back, meta = read_delta(tmp_path / "d.safetensors")
    assert (meta["base_version"], meta["version"]) == ("3", "4")
    assert back.unchanged == ["c"] and list(back.dense) == ["b"] and back.elements == delta.elements
    assert back.changed_elements == delta.changed_elements == 103
    assert torch.equal(back.sparse["a"][0], delta.sparse["a"][0]) and torch.equal(back.sparse["a"][1], delta.sparse["a"][1])
    generator = {k: v.clone() for k, v in prev.items()}
    apply_delta(generator, back)
    assert all(torch.equal(generator[k], new[k].to(torch.bfloat16)) for k in new)


def test_a_file_that_is_not_a_delta_is_refused_naming_it(tmp_path):
    from safetensors.torch import save_file

    from rlcadence.engines.delta import read_delta

    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors: not a weight delta"):
        read_delta(tmp_path / "model.safetensors")
