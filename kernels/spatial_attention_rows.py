"""Launch planning for ``spatial_attention`` by blocks of query rows, the large heads' forward and
backward (``spatial_attention_table.RowsForward``, ``RowsBackward``; kernels and math in
``spatial_attention_rows_jit.py``). Operands arrive in a table layout (``spatial_attention.py``).

For each block of ``R`` query rows, forward: ``P~_r`` and the per-tile statistics into a 16-bit
scratch buffer, then ``O_r``. Backward: the score gradients ``P_r``, ``dS_r`` into the scratch,
then ``dV += dO_r P_r``, ``dK += s Q_r dS_r`` and ``dQ_r = s K dS_rᵀ``; with more than one block,
``dV`` and ``dK`` add up in fp32 buffers and the last block's products round into the results.
``R`` is as large as :data:`SCRATCH_BYTES` allows (every row at once up to ``B N^2 = 2^24`` in
the backward, e.g. one image of 4096 positions), but never so small that the products of one
block leave multiprocessors idle (``O_r`` and ``dQ_r`` have ``HEAD/128 x R/128`` tiles per image):
the scratch is then ``O(SMs 128 N)`` per image, e.g. 256 MB for the backward at (1, 512, 16384)
on 132 SMs, still linear in ``N``, and never above :data:`FILL_SCRATCH_BYTES` for this. Blocks
are of equal size, rounded to whole tiles. Plans depend only on sizes, dtype, layout and the
device, and are cached (:func:`forward_plan`, :func:`rows_plan`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from . import spatial_attention_rows_jit as jit
from . import spatial_attention_table as T
from ._table import Config, Launch, launch_strides

#: bytes of the scratch buffer: ``P`` and ``dS`` of one block of rows, 16-bit, keys padded to tiles
SCRATCH_BYTES = 64 * 2**20
#: the most the scratch may grow to give the products of one block a full wave
FILL_SCRATCH_BYTES = 512 * 2**20


def block_rows(batch: int, n: int, tile: T.RowsConfig, bytes_per_score: int, fill_rows: int) -> int:
    """Query rows per block, a multiple of ``tile``'s rows: at most what :data:`SCRATCH_BYTES`
    holds at ``bytes_per_score`` per (image, row, key) of ``batch`` images (keys padded to
    ``tile``) unless ``fill_rows`` asks for more (within :data:`FILL_SCRATCH_BYTES`), at least one
    tile; then the fewest blocks of that size, evened out (never larger), at most all of ``n``."""
    keys = triton.cdiv(n, tile.block_n) * tile.block_n
    budget = SCRATCH_BYTES // (bytes_per_score * batch * keys)
    fill_rows = min(fill_rows, FILL_SCRATCH_BYTES // (bytes_per_score * batch * keys))
    cap = max(budget // tile.block_m, triton.cdiv(fill_rows, tile.block_m), 1) * tile.block_m
    blocks = triton.cdiv(n, cap)
    return triton.cdiv(triton.cdiv(n, blocks), tile.block_m) * tile.block_m


def fill_rows(batch: int, head: int, product: T.RowsConfig, processors: int) -> int:
    """Rows that give a product of ``(head, rows)`` tiles of ``product`` one wave on
    ``processors`` multiprocessors; none where one row of tiles fills 85% of it already."""
    per_row_of_tiles = head // product.block_m * batch
    if per_row_of_tiles >= 0.85 * processors:
        return 0
    return triton.cdiv(processors, per_row_of_tiles) * product.block_n


@dataclass(frozen=True)
class ForwardPlan:
    rows: int  # query rows per block
    scores: Config
    attend: Config


@functools.lru_cache(maxsize=1024)
def forward_plan(batch, n, head, dtype, layout, arch, processors) -> ForwardPlan:
    tiles = T.FORWARD_TILES[arch][head]
    tile = tiles.scores
    score_tiles = triton.cdiv(n, tile.block_m) * triton.cdiv(n, tile.block_n) * batch
    if tiles.small_scores is not None and score_tiles < processors:
        tile = tiles.small_scores  # more, smaller tiles: fewer idle SMs
    # the product reads whole key tiles of the scratch, unmasked, and the statistics per tile
    assert tile.block_n % tiles.attend.block_k == 0 and tile.block_m % tiles.attend.block_n == 0
    assert head % tiles.attend.block_m == 0
    scores, attend = (T.TABLE.find(arch, e) for e in T.rows_forward_entries(arch, tile, tiles.attend, dtype, layout))
    return ForwardPlan(block_rows(batch, n, tile, 2, fill_rows(batch, head, tiles.attend, processors)), scores, attend)


def forward_launches(plan: ForwardPlan, q, k, v, out, lse, qk_scale) -> list[Launch]:
    """The forward by rows for ``(B, HEAD, N)`` operands in a table layout: ``out`` the result,
    ``lse`` ``(B, N)`` the natural log-sum-exp."""
    batch, head, n = q.shape
    scores, attend = dict(plan.scores.constexprs), dict(plan.attend.constexprs)
    tiles = triton.cdiv(n, scores["BLOCK_N"])
    p = q.new_empty((batch, plan.rows, tiles * scores["BLOCK_N"]))
    stats = q.new_empty((batch, plan.rows, tiles, 2), dtype=torch.float32)
    launches = []
    for r0 in range(0, n, plan.rows):
        rows = min(plan.rows, n - r0)
        launches += [
            Launch(plan.scores, jit._scores_kernel,
                   (triton.cdiv(rows, scores["BLOCK_M"]), tiles, batch),
                   (q, k, p, stats, *launch_strides(q), *launch_strides(k), *launch_strides(p),
                    *launch_strides(stats)[:2], n, head, r0, rows, qk_scale)),
            Launch(plan.attend, jit._attend_kernel,
                   (head // attend["BLOCK_M"], triton.cdiv(rows, attend["BLOCK_N"]), batch),
                   (v, p, stats, out, lse, *launch_strides(v), *launch_strides(p), *launch_strides(stats)[:2],
                    *launch_strides(out), n, head, r0, rows, tiles)),
        ]
    return launches


@dataclass(frozen=True)
class RowsPlan:
    rows: int  # query rows per block
    blocks: int
    key_tile: int  # the scratch's keys are padded to a multiple of this
    scores: Config
    to_partial: Config  # dV / dK of the first block into an fp32 partial sum (several blocks)
    add_partial: Config  # of a middle block, added to it
    to_result: Config  # of the only block
    add_to_result: Config  # of the last block: the partial sum plus this block, rounded
    dq: Config


@functools.lru_cache(maxsize=1024)
def rows_plan(batch, n, head, dtype, layout, arch, processors) -> RowsPlan:
    tiles = T.BACKWARD_TILES[arch][head]
    # the products read the scratch in whole tiles of the score kernel, unmasked
    assert tiles.scores.block_m % tiles.products.block_n == 0 and tiles.scores.block_m % tiles.products.block_k == 0
    assert tiles.scores.block_n % tiles.products.block_k == 0 and head % tiles.products.block_m == 0
    rows = block_rows(batch, n, tiles.scores, 4, fill_rows(batch, head, tiles.products, processors))  # P, dS
    entries = [T.TABLE.find(arch, e) for e in T.rows_entries(arch, tiles, dtype, layout)]
    scores, to_partial, add_partial, to_result, add_to_result, dq = entries
    # dV and dK read whole column tiles of the scratch; what lies past N there (written or not)
    # reaches only output columns past N, which are not stored
    key_tile = max(tiles.scores.block_n, tiles.products.block_n)
    return RowsPlan(rows, triton.cdiv(n, rows), key_tile, scores, to_partial, add_partial, to_result, add_to_result,
                    dq)


def _bmm(entry, out, acc, a, a_strides, b, b_strides, m, n, k, alpha) -> Launch:
    """``out = alpha a b (+ acc)`` batched over the first dimension, with the strides ``(batch,
    rows, columns)`` of ``a`` and ``b`` (the score scratch is also read through a transposed
    view). Without ``ADD``, ``acc`` is any fp32 tensor (never read)."""
    tile = dict(entry.constexprs)
    grid = (triton.cdiv(m, tile["BLOCK_M"]), triton.cdiv(n, tile["BLOCK_N"]), out.shape[0])
    acc_strides = launch_strides(acc) if tile["ADD"] else (0, 0, 1)
    return Launch(entry, jit._bmm_kernel, grid, (a, b, acc, out, *a_strides, *b_strides, *acc_strides,
                                                   *launch_strides(out), m, n, k, alpha))


def launches(plan: RowsPlan, q, k, v, grad_out, lse, delta, dq, dk, dv, scale, qk_scale) -> list[Launch]:
    """The launches of the backward by rows for ``(B, HEAD, N)`` operands in a table layout, after
    the one that computes ``delta``: ``dq``, ``dk``, ``dv`` are the results (16-bit, a table
    layout). Allocates the scratch and, for several blocks, the fp32 partial sums."""
    batch, head, n = q.shape
    tile = dict(plan.scores.constexprs)
    keys = triton.cdiv(n, plan.key_tile) * plan.key_tile
    p = q.new_empty((batch, plan.rows, keys))
    ds = q.new_empty((batch, plan.rows, keys))
    several = plan.blocks > 1
    partial_dv = q.new_empty((batch, head, n), dtype=torch.float32) if several else None
    partial_dk = q.new_empty((batch, head, n), dtype=torch.float32) if several else None
    scratch = launch_strides(p)
    transposed = (scratch[0], scratch[2], scratch[1])  # dS_rᵀ: (keys, rows)
    out = []
    for index, r0 in enumerate(range(0, n, plan.rows)):
        rows = min(plan.rows, n - r0)
        grid = (triton.cdiv(rows, tile["BLOCK_M"]), triton.cdiv(n, tile["BLOCK_N"]), batch)
        out.append(Launch(plan.scores, jit._score_grads_kernel, grid, (
            q, k, v, grad_out, lse, delta, p, ds, *launch_strides(q), *launch_strides(k), *launch_strides(v),
            *launch_strides(grad_out), *scratch, n, head, r0, rows, qk_scale)))
        if not several:
            entry = plan.to_result
        elif index == 0:
            entry = plan.to_partial
        else:
            entry = plan.add_to_result if index == plan.blocks - 1 else plan.add_partial
        last = index == plan.blocks - 1
        for a, b, alpha, partial, result in ((grad_out, p, 1.0, partial_dv, dv), (q, ds, scale, partial_dk, dk)):
            a_rows = a[:, :, r0:r0 + rows]  # dV += dO_r P_r, dK += s Q_r dS_r
            out.append(_bmm(entry, result if last else partial, lse if partial is None else partial,
                            a_rows, launch_strides(a_rows), b, scratch, head, n, rows, alpha))
        # dQ_r = s K dS_rᵀ
        out.append(_bmm(plan.dq, dq[:, :, r0:r0 + rows], lse, k, launch_strides(k), ds, transposed, head, rows, n,
                        scale))
    return out
