"""Structural check of an hnswlib index file before ``load_index`` sees it.

hnswlib trusts its file: a link id past the element count, a link count past maxM0, or
an upper-level link to a node that has no such level makes the first search read outside
its arrays (a segfault, on every restart). The sha256 record only guards against
accidents, so every checkpoint is parsed here (hnswlib 0.8 ``saveIndex`` layout) and
refused unless the graph is well-formed:

    header (96 bytes, little-endian): offsetLevel0, max_elements, cur_element_count,
        size_data_per_element, label_offset, offsetData (u64), maxlevel (i32),
        enterpoint_node (u32), maxM, maxM0, M (u64), mult (f64), ef_construction (u64)
    level 0: cur_element_count records of size_data_per_element bytes:
        u32 header (low 16 bits: link count; byte 2: deleted flag), maxM0 x u32 links,
        dim x f32 vector, u64 label
    then per element: u32 byte size of its upper-level lists (level x (4 + 4 maxM)),
        and those lists (u32 header + maxM x u32 links each)
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

import numpy as np

from core.errors import StoreError

HEADER = struct.Struct("<QQQQQQiIQQQdQ")
#: hnswlib's empty index has enterpoint_node = (tableint) -1
NO_ENTRY = 0xFFFFFFFF


def check_index_file(path: Path, dim: int, *, capacity_floor: int, growth: float) -> None:
    """StoreError unless ``path`` is a well-formed hnswlib index of ``dim``-d float32
    vectors. Its capacity must be at most max(capacity_floor, n x max(2, growth)) for n
    elements (what the store itself can reach): it bounds what ``load_index`` allocates.
    """
    what = f"index checkpoint {path.name}"
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) < HEADER.size:
                raise StoreError(f"{what}: shorter than the hnswlib header")
            # mapped, not read: a 100k checkpoint is ~240 MB and the index comes next
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as raw:
                why = _why_not(raw, dim, (capacity_floor, growth), what)
    except OSError as exc:
        raise StoreError(f"{what}: unreadable: {exc.strerror or exc}") from None
    if why is not None:
        raise StoreError(why)


def _why_not(raw: mmap.mmap, dim: int, cap: tuple[int, float], what: str) -> str | None:
    """The reason the file is refused, or None. Returns rather than raises so that no
    traceback keeps a numpy view of the mapping alive when it is closed."""
    try:
        _check(raw, dim, cap, what)
    except StoreError as exc:
        return str(exc)
    return None


def _check(raw: mmap.mmap, dim: int, cap: tuple[int, float], what: str) -> None:
    data = np.frombuffer(raw, dtype=np.uint8)
    (off0, max_elements, n, per, label_off, data_off, maxlevel, entry, max_m, max_m0, m,
     _mult, _efc) = HEADER.unpack_from(raw)
    links0 = 4 + 4 * max_m0
    if off0 != 0 or data_off != links0 or label_off != data_off + 4 * dim or (
            per != label_off + 8):
        raise StoreError(f"{what}: element layout does not match {dim}-d vectors")
    if not 2 <= m <= 10_000 or max_m != m or max_m0 != 2 * m:
        raise StoreError(f"{what}: M={m}, maxM={max_m}, maxM0={max_m0} inconsistent")
    max_capacity = max(cap[0], math.ceil(n * max(2.0, cap[1])))
    if n > max_elements or max_elements > max_capacity:
        raise StoreError(f"{what}: {n} elements in {max_elements} slots "
                         f"(at most {max_capacity} expected)")
    body = HEADER.size + n * per
    if data.size < body + 4 * n:
        raise StoreError(f"{what}: truncated ({data.size} bytes)")
    level0 = data[HEADER.size:body].reshape(n, per)
    heads = level0[:, :links0].copy().view("<u4")  # (n, 1 + maxM0)
    counts = heads[:, 0] & 0xFFFF
    if n and int(counts.max()) > max_m0:
        raise StoreError(f"{what}: a level-0 link count exceeds maxM0={max_m0}")
    used = np.arange(max_m0)[None, :] < counts[:, None]
    if n and (heads[:, 1:][used] >= n).any():
        raise StoreError(f"{what}: a level-0 link points past the {n} elements")
    # the upper-level lists, element by element (most are empty: 4 bytes each)
    size_links = 4 + 4 * max_m
    levels = np.zeros(n, dtype=np.int64)
    blocks: list[tuple[int, int, int]] = []  # (element, offset, level count)
    pos = body
    size_at = struct.Struct("<I").unpack_from
    for i in range(n):
        if pos + 4 > len(raw):
            raise StoreError(f"{what}: truncated in the link lists")
        (size,) = size_at(raw, pos)
        pos += 4
        if size:
            if size % size_links or pos + size > len(raw):
                raise StoreError(f"{what}: bad link list size {size} of element {i}")
            levels[i] = size // size_links
            blocks.append((i, pos, int(levels[i])))
            pos += size
    if pos != len(raw):
        raise StoreError(f"{what}: {len(raw) - pos} bytes after the link lists")
    if blocks:
        offsets = np.concatenate([np.arange(lv) * size_links + at for _, at, lv in blocks])
        owner_level = np.concatenate([np.arange(1, lv + 1) for _, _, lv in blocks])
        rows = np.stack([np.frombuffer(raw, dtype="<u4", count=1 + max_m, offset=int(o))
                         for o in offsets])
        up_counts = rows[:, 0] & 0xFFFF
        if int(up_counts.max()) > max_m:
            raise StoreError(f"{what}: an upper-level link count exceeds maxM={max_m}")
        up_used = np.arange(max_m)[None, :] < up_counts[:, None]
        targets = rows[:, 1:][up_used]
        if (targets >= n).any():
            raise StoreError(f"{what}: an upper-level link points past the {n} elements")
        need = np.broadcast_to(owner_level[:, None], up_used.shape)[up_used]
        if (levels[targets] < need).any():
            raise StoreError(f"{what}: an upper-level link to a node without that level")
    if n == 0:
        if entry != NO_ENTRY and maxlevel not in (-1, 0):
            raise StoreError(f"{what}: empty index with an entry point")
        return
    if entry >= n:
        raise StoreError(f"{what}: entry point {entry} past the {n} elements")
    top = int(levels.max())
    if maxlevel != top or levels[entry] != top:
        raise StoreError(f"{what}: max level {maxlevel} / entry level {levels[entry]}, "
                         f"the graph's top level is {top}")
