"""Keyed Gumbel sampler: pinned hash vectors, torch == reference, determinism, distribution."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from verinfer.digest import SamplingParams
from verinfer.sampler import (
    gumbel_hash,
    gumbel_hash_ref,
    gumbel_noise,
    gumbel_ref,
    gumbel_scores,
    seed_words,
    select_tokens,
)

# (seed, position, vocab id, hash, gumbel) — fixed forever: nodes and verifiers depend on them.
VECTORS = [
    (0x0, 0, 0, 0xC82D5BC0, 1.4025271478004526),
    (0x1, 0, 0, 0x87DF5FBF, 0.45655827169302726),
    (0x0, 1, 0, 0x0D3C7DE4, -1.0859371959379316),
    (0x0, 0, 1, 0x7D08C7FF, 0.333252362586941),
    (0xFFFFFFFFFFFFFFFF, 4294967295, 151935, 0x5DB57F86, -0.004971076342178588),
    (0x2A, 7, 123, 0x9E6BCF3C, 0.7341346644194552),
    (0xDEADBEEFCAFEBABE, 1000, 31, 0xD856B242, 1.781814649223676),
]


@pytest.mark.parametrize(("seed", "pos", "vocab", "h", "g"), VECTORS)
def test_gumbel_hash__pinned_vectors__reference_and_torch_agree(seed, pos, vocab, h, g):
    assert gumbel_hash_ref(seed, pos, vocab) == h
    assert gumbel_ref(seed, pos, vocab) == pytest.approx(g, abs=1e-15)
    got = gumbel_hash(seed_words([seed]), torch.tensor([pos]), torch.tensor([vocab]))
    assert int(got[0, 0]) == h
    noise = gumbel_noise([seed], [pos], vocab + 1)
    assert float(noise[0, vocab]) == pytest.approx(g, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    pos=st.integers(0, 2**32 - 1),
    vocab=st.integers(1, 300),
)
def test_gumbel_hash__torch_matches_reference_everywhere(seed, pos, vocab):
    got = gumbel_hash(seed_words([seed]), torch.tensor([pos]), torch.arange(vocab))
    assert got.tolist()[0] == [gumbel_hash_ref(seed, pos, v) for v in range(vocab)]


def test_gumbel_noise__blocking_does_not_change_values():
    seeds, positions = list(range(300)), list(range(300, 600))
    whole = gumbel_noise(seeds, positions, 512)  # 300 x 512 > one block
    rows = torch.cat([gumbel_noise([s], [p], 512) for s, p in zip(seeds, positions, strict=True)])
    assert torch.equal(whole, rows)
    assert float(whole[299, 511]) == pytest.approx(gumbel_ref(299, 599, 511), abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gumbel_hash__cuda_equals_cpu():
    seeds, pos = list(range(64)), list(range(64))
    cpu = gumbel_hash(seed_words(seeds), torch.tensor(pos), torch.arange(4096))
    gpu = gumbel_hash(
        seed_words(seeds, "cuda"), torch.tensor(pos), torch.arange(4096, device="cuda")
    )
    assert torch.equal(cpu, gpu.cpu())


def test_select_tokens__greedy_is_argmax_and_ignores_seed():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(8, 0, 5, seed) for seed in range(6)]
    assert torch.equal(select_tokens(logits, params, [0] * 6), logits.argmax(-1))


def test_select_tokens__same_key_same_token__other_seed_other_stream():
    logits = torch.zeros(1, 64)
    a = [int(select_tokens(logits, [SamplingParams(8, 1000, 0, 11)], [i])) for i in range(40)]
    b = [int(select_tokens(logits, [SamplingParams(8, 1000, 0, 11)], [i])) for i in range(40)]
    c = [int(select_tokens(logits, [SamplingParams(8, 1000, 0, 12)], [i])) for i in range(40)]
    assert a == b
    assert a != c
    # flat logits: the keyed sample is the argmax of the noise alone
    assert a[5] == int(gumbel_noise([11], [5], 64).argmax())


def _draws(logits: torch.Tensor, params: SamplingParams, n: int) -> torch.Tensor:
    rows = logits.expand(n, -1)
    return select_tokens(rows, [params] * n, list(range(n)))


def test_sampler__distribution_matches_softmax__chi_square():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0])
    params = SamplingParams(8, temperature_milli=700, seed=2024)
    n = 20_000
    counts = torch.bincount(_draws(logits, params, n), minlength=8).double()
    expected = torch.softmax(logits.double() / 0.7, -1) * n
    _, p_value = chisquare(counts.numpy(), expected.numpy())
    assert p_value > 1e-3, (counts, expected)


def test_sampler__top_k_restricts_and_renormalises__chi_square():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0])
    params = SamplingParams(8, temperature_milli=1000, top_k=3, seed=77)
    n = 12_000
    counts = torch.bincount(_draws(logits, params, n), minlength=8).double()
    assert counts[3:].sum() == 0
    expected = torch.softmax(logits[:3].double(), -1) * n
    _, p_value = chisquare(counts[:3].numpy(), expected.numpy())
    assert p_value > 1e-3, (counts, expected)


def test_gumbel_scores__outside_top_k_is_minus_inf():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    scores = gumbel_scores(logits, [SamplingParams(4, 500, 2, 1)], [0])
    assert math.isinf(float(scores[0, 2])) and float(scores[0, 2]) < 0
    assert math.isfinite(float(scores[0, 1]))
