"""Keyed Gumbel-max sampling (PROTOCOL.md §6).

A sampled token is ``argmax_v(logit_v / T + g(seed, i, v))`` over the (optional) top-k set,
where ``g`` is Gumbel noise derived from a counter-based integer hash of
``(seed, position i, vocab id v)``. Because the noise is a pure function of integers, the
generator and the verifier compute the same noise on any device; the verifier can therefore
re-apply the greedy rule to ``logit / T + g``. Temperature 0 is plain greedy.

The hash is MurmurHash3 (x86, 32-bit) over four little 32-bit words
``(seed_lo, seed_hi, position, vocab_id)`` with a fixed hash seed. The torch version does every
step in int64 tensors on values < 2**49 (32-bit multiplications are split into 16-bit halves),
so it is bit-identical on CPU and CUDA and never relies on signed overflow. The uniform
``u = (h + 0.5) / 2**32`` and ``g = -log(-log(u))`` are computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from verinfer.digest import SamplingParams

MASK32 = 0xFFFFFFFF
HASH_SEED = 0x5EED_0F1E  # fixed domain separator of the verinfer Gumbel hash
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_M5_ADD = 0xE6546B64
_F1 = 0x85EBCA6B
_F2 = 0xC2B2AE35
_N_WORDS = 4
_BLOCK_ELEMENTS = 1 << 15


# ---------------------------------------------------------------------------------------------
# pure-Python reference (the source of the pinned test vectors)
# ---------------------------------------------------------------------------------------------


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & MASK32


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * _F1) & MASK32
    h ^= h >> 13
    h = (h * _F2) & MASK32
    h ^= h >> 16
    return h


def _mix_word(h: int, k: int) -> int:
    k = (k * _C1) & MASK32
    k = _rotl32(k, 15)
    k = (k * _C2) & MASK32
    h ^= k
    h = _rotl32(h, 13)
    return (h * 5 + _M5_ADD) & MASK32


def gumbel_hash_ref(seed: int, position: int, vocab_id: int) -> int:
    """MurmurHash3-32 of ``(seed_lo, seed_hi, position, vocab_id)``; pure-Python reference."""
    h = HASH_SEED
    for word in (seed & MASK32, (seed >> 32) & MASK32, position & MASK32, vocab_id & MASK32):
        h = _mix_word(h, word)
    return _fmix32(h ^ (4 * _N_WORDS))


def gumbel_ref(seed: int, position: int, vocab_id: int) -> float:
    """Gumbel(0, 1) noise for one (seed, position, vocab id); pure-Python reference."""
    u = (gumbel_hash_ref(seed, position, vocab_id) + 0.5) / 2.0**32
    return -math.log(-math.log(u))


# ---------------------------------------------------------------------------------------------
# torch implementation (int64 tensors, identical on CPU and CUDA)
# ---------------------------------------------------------------------------------------------


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for 0 <= x < 2**32; every intermediate stays below 2**49."""
    hi = (x * (c >> 16)).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return x.mul(c & 0xFFFF).add_(hi).bitwise_and_(MASK32)


def _rotl32_t(x: torch.Tensor, r: int) -> torch.Tensor:
    return (x << r).bitwise_and_(MASK32).bitwise_or_(x >> (32 - r))


def _fmix32_t(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, _F1)
    h.bitwise_xor_(h >> 13)
    h = _mul32(h, _F2)
    return h.bitwise_xor_(h >> 16)


def _mix_word_t(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = _mul32(k, _C1)
    k = _rotl32_t(k, 15)
    k = _mul32(k, _C2)
    h = _rotl32_t(h ^ k, 13)
    return h.mul_(5).add_(_M5_ADD).bitwise_and_(MASK32)


def gumbel_hash(
    seeds: torch.Tensor, positions: torch.Tensor, vocab_ids: torch.Tensor
) -> torch.Tensor:
    """Vectorised hash: ``seeds`` (B, 2) int64 lo/hi words, ``positions`` (B,), ``vocab_ids`` (V,).

    Returns int64 (B, V) with values in [0, 2**32).
    """
    device = vocab_ids.device
    h = torch.full((seeds.shape[0],), HASH_SEED, dtype=torch.int64, device=device)
    h = _mix_word_t(h, seeds[:, 0].to(device))
    h = _mix_word_t(h, seeds[:, 1].to(device))
    h = _mix_word_t(h, positions.to(device=device, dtype=torch.int64) & MASK32)
    return _fmix32_t(
        _mix_word_t(h[:, None], (vocab_ids.to(torch.int64) & MASK32)[None, :]) ^ (4 * _N_WORDS)
    )


def seed_words(seeds: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint64 seeds as an int64 tensor (B, 2) of (lo, hi) 32-bit words."""
    return torch.tensor(
        [[s & MASK32, (s >> 32) & MASK32] for s in seeds], dtype=torch.int64, device=device
    ).reshape(len(seeds), 2)


def gumbel_noise(
    seeds: Sequence[int],
    positions: Sequence[int] | torch.Tensor,
    vocab_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Gumbel noise, float64 (B, V), for rows ``(seeds[b], positions[b])`` and all vocab ids.

    Rows are hashed in blocks of about ``_BLOCK_ELEMENTS`` so the ~30 integer passes run in
    cache; the result does not depend on the blocking.
    """
    pos = torch.as_tensor(positions, dtype=torch.int64).to(device)
    words = seed_words(seeds, device)
    vocab = torch.arange(vocab_size, dtype=torch.int64, device=device)
    out = torch.empty((len(seeds), vocab_size), dtype=torch.float64, device=device)
    step = max(1, _BLOCK_ELEMENTS // max(vocab_size, 1))
    for start in range(0, len(seeds), step):
        h = gumbel_hash(words[start : start + step], pos[start : start + step], vocab)
        u = h.to(torch.float64).add_(0.5).div_(2.0**32)
        out[start : start + step] = u.log_().neg_().log_().neg_()
    return out


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------


def topk_threshold(logits: torch.Tensor, top_k: Sequence[int]) -> torch.Tensor:
    """Per-row k-th largest logit (float64 (B,)); ``-inf`` where top-k is off (0 or >= V)."""
    vocab = logits.shape[-1]
    ks = torch.tensor([k if 0 < k < vocab else 0 for k in top_k], device=logits.device)
    out = torch.full((logits.shape[0],), -math.inf, dtype=torch.float64, device=logits.device)
    if bool((ks > 0).any()):
        top = torch.topk(logits.to(torch.float64), int(ks.max())).values
        kth = top.gather(1, (ks - 1).clamp(min=0)[:, None])[:, 0]
        out = torch.where(ks > 0, kth, out)
    return out


def gumbel_scores(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    positions: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """The score each token is ranked by: ``logit`` (greedy) or ``logit/T + g`` (sampled).

    Tokens outside the top-k set get ``-inf``. ``logits`` is (B, V); returns float64 (B, V).
    """
    scores = logits.to(torch.float64)
    temps = torch.tensor(
        [p.temperature if not p.greedy else 1.0 for p in params],
        dtype=torch.float64,
        device=logits.device,
    )
    rows = [r for r, p in enumerate(params) if not p.greedy]
    if rows:
        pos = torch.as_tensor(positions, dtype=torch.int64)[rows]
        noise = gumbel_noise([params[r].seed for r in rows], pos, logits.shape[-1], logits.device)
        idx = torch.tensor(rows, device=logits.device)
        scores = scores.clone()
        scores[idx] = scores[idx] / temps[idx, None] + noise
    kth = topk_threshold(logits, [p.top_k if not p.greedy else 0 for p in params])
    return scores.masked_fill(logits.to(torch.float64) < kth[:, None], -math.inf)


def select_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    positions: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """Next token per row: greedy argmax, or keyed Gumbel-max over the top-k set."""
    return gumbel_scores(logits, params, positions).argmax(dim=-1)


def gumbel_transform_row(
    logits: torch.Tensor, params: SamplingParams, position: int
) -> torch.Tensor:
    """One row's scores as a logits vector whose argmax is the keyed sample (vLLM adapter)."""
    return gumbel_scores(logits[None, :], [params], [position])[0].to(torch.float32)
