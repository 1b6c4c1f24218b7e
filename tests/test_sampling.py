"""Logits processors on hand-made distributions."""
import math

import pytest
import torch

from mmsdk.decoder.sampling import (apply_repetition_penalty, greedy, make_sampler, min_p_filter, top_k_filter,
                                    top_p_filter)

PROBS = torch.tensor([0.5, 0.25, 0.15, 0.1])
LOGITS = PROBS.log()


def kept(logits):
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_keeps_k_best():
    assert kept(top_k_filter(LOGITS, 2)) == [0, 1]


@pytest.mark.parametrize("p,expected", [(0.5, [0]), (0.6, [0, 1]), (0.75, [0, 1]), (0.8, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_smallest_set_reaching_p(p, expected):
    assert kept(top_p_filter(LOGITS, p)) == expected


def test_top_p_handles_unsorted_input():
    logits = torch.tensor([0.1, 0.5, 0.15, 0.25]).log()
    assert kept(top_p_filter(logits, 0.7)) == [1, 3]


def test_min_p_relative_to_top():
    assert kept(min_p_filter(LOGITS, 0.4)) == [0, 1]  # 0.15 < 0.4 * 0.5


def test_repetition_penalty_pushes_seen_tokens_down():
    logits = torch.tensor([2.0, -1.0, 0.5])
    out = apply_repetition_penalty(logits, [0, 1], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5]


def test_greedy_and_seeded_sampling():
    assert make_sampler()(LOGITS, []) == 0
    draw = lambda seed: [make_sampler(temperature=1.0, seed=seed)(LOGITS, []) for _ in range(1)]
    s1 = make_sampler(temperature=1.0, seed=7)
    s2 = make_sampler(temperature=1.0, seed=7)
    a = [s1(LOGITS, []) for _ in range(50)]
    b = [s2(LOGITS, []) for _ in range(50)]
    assert a == b and len(set(a)) > 1
    assert draw(1) == draw(1)


def test_greedy_picks_as_torch_argmax_does():
    """The numpy argmax `greedy` takes on the CPU: the first of tied maxima, a NaN before anything, a strided
    row (a batch's logits) and bfloat16 (torch's own argmax) alike."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 1000, generator=gen)
    rows[1, [7, 400]] = 9.0  # a tie: the first wins
    rows[2, 500] = float("nan")
    for row in [*rows, rows[:, 3], rows[0].bfloat16()]:
        assert greedy(row) == int(row.argmax())
    assert greedy(rows[1]) == 7 and greedy(rows[2]) == 500


def test_sampling_frequencies_follow_distribution():
    s = make_sampler(temperature=1.0, seed=0)
    counts = torch.bincount(torch.tensor([s(LOGITS, []) for _ in range(4000)]), minlength=4).float() / 4000
    assert torch.allclose(counts, PROBS, atol=0.03)


def test_top_k_one_is_greedy_even_with_temperature():
    s = make_sampler(temperature=5.0, top_k=1, seed=0)
    assert {s(LOGITS, []) for _ in range(20)} == {0}


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_sampler(temperature=-1)
    with pytest.raises(ValueError):
        make_sampler(top_p=1.5)
    assert not math.isnan(float(top_p_filter(LOGITS, 0.9).max()))
