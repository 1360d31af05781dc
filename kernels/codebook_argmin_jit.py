r"""The search kernels of ``codebook_argmin``: nearest codebook entry without the ``N x K`` matrix.

For latent rows ``z`` (``N`` rows of ``D`` values; row ``n = b * HW + hw`` at offset
``b * stride_zb + hw * stride_zw``, value ``d`` at ``+ d * stride_zd``; a batch item holds
``item_blocks`` whole blocks of ``BLOCK_N`` rows, or there is one item) and a codebook ``e`` of
``K`` contiguous rows (row stride ``stride_ek``):

.. math::
    i_n = \arg\min_k \big(\lVert e_k \rVert^2 - 2\, z_n \cdot e_k\big)
        = \arg\min_k \lVert z_n - e_k \rVert^2

ties going to the lowest ``k`` (``torch.argmin``). The norms ``||e_k||^2`` come padded with
``+inf`` up to a multiple of every ``BLOCK_K`` (:data:`NORMS_PAD`). A program takes a block of ``BLOCK_N`` rows
(inside one batch item) and a contiguous range of ``BLOCK_K``-code tiles (a *split* of the
codebook), computes ``||e_k||^2 - 2 z.e_k`` per tile on tensor cores and keeps a running
``(min, index)`` per row. It folds its result into a per-row int64 slot with ``atomic_min`` on
``(order-preserving key of the distance) << 32 | index``: the minimum packed value is the
smallest distance with the lowest index whatever order the splits finish in, so splitting the
codebook across programs stays deterministic and needs no partial buffers.

* ``_resident_kernel`` (fp16 / bf16, ``D <= 256``): the ``(BLOCK_N, BLOCK_D)`` latent tile is
  loaded once and stays in shared memory; one loop over codebook tiles, each one ``tl.dot`` over
  the whole (zero-padded) ``D``. The loop is software-pipelined by hand: the product of tile
  ``t + 1`` is issued before the argmin of tile ``t``, so the tensor cores work while the CUDA
  cores reduce, and the compiler's pipeline (``num_stages >= 3``) keeps the codebook loads two
  tiles ahead. 16-bit products are exact in fp32, accumulated in fp32.
* ``_chunked_kernel``: one loop over (codebook tile, ``BLOCK_D`` chunk of ``D``) steps, the tile's
  argmin on its last chunk, so the compiler's load pipeline runs across tiles (the latent chunk
  is re-read from L2 per tile). Dot kinds: ``"native"`` (fp16 / bf16, ``D > 256``), ``"tf32"``
  (fp32 operands, one TF32 product) and ``"tf32x3"`` (fp32 on tensor cores with three TF32
  products: ``z = z_big + z_small`` split here, the codebook's ``e_big`` / ``e_small`` prepared
  once per call; ``z.e ~ z_big.e_big + z_small.e_big + z_big.e_small``, the dropped
  ``z_small.e_small`` below ``2^-22 |z_d e_d|``). Both TF32 kinds keep the runner-up per row
  (across splits: whatever loses in the best slot is a runner-up candidate), which the finalize
  kernel re-ranks by the exact fp32 ``sum_d (z_d - e_d)^2``.

The argmin of a ``(BLOCK_N, BLOCK_K)`` tile costs per distance one FMA (``||e||^2 - 2 acc``),
one max (NaN -> -inf), one min and the index search (compare, select, integer min) on a tile-local
column index. NaN distances count as the smallest (``torch.argmin``'s rule, as the reference).
"""

from __future__ import annotations

import triton
import triton.language as tl

from vqvae_fast._device import interpreting

#: value of a packed (key, index) slot before any candidate arrived (int64 max).
EMPTY_SLOT = 2**63 - 1
#: the code norms' length is a multiple of this (every BLOCK_K divides it); padding norms are +inf
NORMS_PAD = 128
INT32_MAX = 2**31 - 1
_INT32_MAX = tl.constexpr(INT32_MAX)
#: Triton's CPU interpreter multiplies bf16 bit patterns wrongly in ``tl.dot``; there the native
#: dot runs on the upcast values (the same exact-product computation).
_INTERPRETED = tl.constexpr(interpreting())


@triton.jit
def _order_key(x):
    """fp32 -> int32 whose signed order is the float order (-0.0 folded into +0.0); applied to
    the key's bits again it gives the float back."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _row_offsets(row_block, item_blocks, stride_zb, stride_zw, BLOCK_N: tl.constexpr):
    """int64 offsets of the rows of block ``row_block``, which lie in one batch item of
    ``item_blocks`` row blocks (scalar batch index, consecutive positions: contiguous addresses
    when ``stride_zw`` is 1). A 32-bit division: a 64-bit one is a subroutine call."""
    b = row_block // item_blocks
    hw = (row_block - b * item_blocks).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    return b.to(tl.int64) * stride_zb + hw * stride_zw


@triton.jit
def _native_dot(z, e, acc):
    """``acc + z @ e`` for fp16 / bf16 operands: exact products, fp32 accumulation."""
    if _INTERPRETED:
        return tl.dot(z.to(tl.float32), e.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(z, e, acc)


@triton.jit
def _split_tf32(x):
    """``(big, small)`` with ``x = big + small`` exactly: ``big`` the nearest TF32 value (ties
    away from zero; bits below TF32 cleared), ``small`` the remainder (``|small| <= 2^-11 |x|``,
    read by the tensor cores to its top 11 bits). For non-finite ``x`` (and ``|x|`` within
    ``2^-12`` of the largest float) the pair is garbage: the finalize kernel recomputes such rows.
    """
    bits = x.to(tl.int32, bitcast=True)
    big = ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)
    return big, x - big


@triton.jit
def _tile_distances(acc, enorm):
    """``||e||^2 - 2 acc`` (one FMA) with NaN -> -inf (``maximum`` returns the non-NaN operand):
    NaN is the smallest under ordered comparisons, as ``torch.argmin`` wants."""
    return tl.maximum(enorm[None, :] - 2.0 * acc, float("-inf"))


@triton.jit
def _tile_best(dist, local):
    """Per row the smallest distance of the tile and its lowest tile-local column."""
    tile_min = tl.min(dist, axis=1)
    arg = tl.min(tl.where(dist == tile_min[:, None], local[None, :], _INT32_MAX), axis=1)
    return tile_min, arg


@triton.jit
def _fold(acc, enorm, local, base, best, best_idx):
    """Fold tile ``[base, base + BLOCK_K)`` into the running ``(best, best_idx)`` per row; strict
    ``<``: an earlier tile (lower codes) keeps an equal distance."""
    tile_min, arg = _tile_best(_tile_distances(acc, enorm), local)
    take = tile_min < best
    return tl.where(take, tile_min, best), tl.where(take, base + arg, best_idx)


@triton.jit
def _fold_two(acc, enorm, local, base, best, best_idx, second, second_idx):
    """:func:`_fold` that also keeps the runner-up: the union's runner-up is the loser of the two
    bests against the other list's next."""
    dist = _tile_distances(acc, enorm)
    tile_min, arg = _tile_best(dist, local)
    tile_min2, arg2 = _tile_best(tl.where(local[None, :] == arg[:, None], float("inf"), dist), local)
    take = tile_min < best
    old = tl.where(take, best, second)
    old_idx = tl.where(take, best_idx, second_idx)
    new = tl.where(take, tile_min2, tile_min)
    new_idx = base + tl.where(take, arg2, arg)
    keep_old = old <= new  # equal: the older (lower) code
    second = tl.where(keep_old, old, new)
    second_idx = tl.where(keep_old, old_idx, new_idx)
    return tl.where(take, tile_min, best), tl.where(take, base + arg, best_idx), second, second_idx


@triton.jit
def _publish(best_ptr, second_ptr, rows, row_mask, best, best_idx, second, second_idx, TRACK_SECOND: tl.constexpr):
    """Fold this program's per-row result into the packed slots (``atomic_min``)."""
    packed = (_order_key(best).to(tl.int64) << 32) | best_idx.to(tl.int64)
    old_slot = tl.atomic_min(best_ptr + rows, packed, mask=row_mask, sem="relaxed")
    if TRACK_SECOND:
        # Whatever loses in the best slot is a runner-up candidate: our best (it lost) or the
        # previous holder (we displaced it); with each program's own runner-up, the minimum over
        # all of them is the overall runner-up, whatever the order of the atomics.
        loser = tl.where(packed < old_slot, old_slot, packed)
        packed2 = (_order_key(second).to(tl.int64) << 32) | second_idx.to(tl.int64)
        tl.atomic_min(second_ptr + rows, tl.minimum(loser, packed2), mask=row_mask, sem="relaxed")


@triton.jit
def _program_work(N, K, num_splits, tiles_per_split, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's rows and codebook tiles: row block ``pid // num_splits`` (its rows and their
    mask) against tiles ``[tile_begin, tile_end)``, split ``s = pid % num_splits`` of the
    codebook's tiles (at least one tile: the launcher sizes the splits so)."""
    pid = tl.program_id(0)
    row_block = pid // num_splits
    split = pid - row_block * num_splits
    rows = row_block.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # 64-bit: N may exceed 2^31 rows
    tile_begin = split * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, tl.cdiv(K, BLOCK_K))
    return row_block, rows, rows < N, tile_begin, tile_end


@triton.jit
def _resident_kernel(
    z_ptr, e_ptr, enorm_ptr, best_ptr,
    N, K, D, item_blocks, stride_zb, stride_zw, stride_zd, stride_ek, num_splits, tiles_per_split,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """fp16 / bf16, ``D <= BLOCK_D``: program ``pid`` takes row block ``pid // num_splits``
    against codebook tiles ``[s * tiles_per_split, (s + 1) * tiles_per_split)`` with
    ``s = pid % num_splits`` (at least one tile: the launcher sizes the splits so)."""
    row_block, rows, row_mask, tile_begin, tile_end = _program_work(
        N, K, num_splits, tiles_per_split, BLOCK_N, BLOCK_K)
    dims = tl.arange(0, BLOCK_D)
    d_mask = dims < D
    row_off = _row_offsets(row_block, item_blocks, stride_zb, stride_zw, BLOCK_N)
    z = tl.load(z_ptr + row_off[:, None] + dims[None, :].to(tl.int64) * stride_zd,
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D), resident
    local = tl.arange(0, BLOCK_K)
    codes = tile_begin * BLOCK_K + local
    e_ptrs = e_ptr + codes.to(tl.int64)[None, :] * stride_ek + dims[:, None]  # (BLOCK_D, BLOCK_K)
    step = stride_ek.to(tl.int64) * BLOCK_K
    e = tl.load(e_ptrs, mask=d_mask[:, None] & (codes < K)[None, :], other=0.0)
    enorm = tl.load(enorm_ptr + codes)  # padded with +inf: padding codes never win a strict comparison
    acc = _native_dot(z, e, tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32))
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    for tile in range(tile_begin + 1, tile_end):
        # issue tile t + 1's product, then reduce tile t while the tensor cores run
        codes = tile * BLOCK_K + local
        e_ptrs += step
        e = tl.load(e_ptrs, mask=d_mask[:, None] & (codes < K)[None, :], other=0.0)
        next_enorm = tl.load(enorm_ptr + codes)
        next_acc = _native_dot(z, e, tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32))
        best, best_idx = _fold(acc, enorm, local, (tile - 1) * BLOCK_K, best, best_idx)
        acc, enorm = next_acc, next_enorm
    best, best_idx = _fold(acc, enorm, local, (tile_end - 1) * BLOCK_K, best, best_idx)
    _publish(best_ptr, best_ptr, rows, row_mask, best, best_idx, best, best_idx, False)


@triton.jit
def _chunked_kernel(
    z_ptr, e_ptr, es_ptr, enorm_ptr, best_ptr, second_ptr,
    N, K, D, item_blocks, stride_zb, stride_zw, stride_zd, stride_ek, num_splits, tiles_per_split,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT: tl.constexpr,  # "native" (fp16 / bf16), "tf32" (one TF32 product), "tf32x3" (three)
    TRACK_SECOND: tl.constexpr,  # keep the runner-up (the TF32 kinds: the finalize re-ranks both)
):
    """Like :func:`_resident_kernel` with ``D`` in ``BLOCK_D`` chunks. For ``"tf32x3"``, ``e_ptr``
    and ``es_ptr`` hold the codebook's TF32 big and small parts (zero-padded to a multiple of
    ``BLOCK_D`` columns: no mask along ``D``); otherwise ``es_ptr`` is not read."""
    row_block, rows, row_mask, tile_begin, tile_end = _program_work(
        N, K, num_splits, tiles_per_split, BLOCK_N, BLOCK_K)
    row_off = _row_offsets(row_block, item_blocks, stride_zb, stride_zw, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    local = tl.arange(0, BLOCK_K)

    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    second = tl.full([BLOCK_N], float("inf"), tl.float32)
    second_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    # One loop over (tile, chunk) steps, not a loop over chunks inside a loop over tiles: the
    # compiler's pipeline then runs across tile boundaries (the next tile's first chunks load
    # while this tile's argmin runs) instead of draining and refilling once per tile.
    chunks = tl.cdiv(D, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for step in range(0, (tile_end - tile_begin) * chunks):
        # the step's tile and chunk from the loop index alone: the loads' addresses do not
        # depend on the previous step's argmin, so the pipeline can issue them ahead
        tile_step = step // chunks
        chunk = step - tile_step * chunks
        base = (tile_begin + tile_step) * BLOCK_K
        code_mask = (base + local) < K
        d_off = (chunk * BLOCK_D + dims).to(tl.int64)
        d_mask = (chunk * BLOCK_D + dims) < D
        zt = tl.load(z_ptr + row_off[:, None] + d_off[None, :] * stride_zd,
                     mask=row_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        e_off = (base + local).to(tl.int64)[None, :] * stride_ek + d_off[:, None]  # (BLOCK_D, BLOCK_K)
        if DOT == "tf32x3":  # prepared parts: padded columns, no mask along D
            e_big = tl.load(e_ptr + e_off, mask=code_mask[None, :], other=0.0)
            e_small = tl.load(es_ptr + e_off, mask=code_mask[None, :], other=0.0)
            z_big, z_small = _split_tf32(zt.to(tl.float32))
            acc = tl.dot(z_small, e_big, acc, input_precision="tf32")
            acc = tl.dot(z_big, e_small, acc, input_precision="tf32")
            acc = tl.dot(z_big, e_big, acc, input_precision="tf32")
        else:
            et = tl.load(e_ptr + e_off, mask=d_mask[:, None] & code_mask[None, :], other=0.0)
            if DOT == "tf32":
                acc = tl.dot(zt.to(tl.float32), et.to(tl.float32), acc, input_precision="tf32")
            else:
                acc = _native_dot(zt, et, acc)
        if chunk == chunks - 1:  # the tile's product is complete: its argmin, then the next tile
            enorm = tl.load(enorm_ptr + base + local)  # padded with +inf
            if TRACK_SECOND:
                best, best_idx, second, second_idx = _fold_two(acc, enorm, local, base, best, best_idx, second,
                                                               second_idx)
            else:
                best, best_idx = _fold(acc, enorm, local, base, best, best_idx)
            acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    _publish(best_ptr, second_ptr, rows, row_mask, best, best_idx, second, second_idx, TRACK_SECOND)
