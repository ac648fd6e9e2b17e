"""The index graph shipped in a snapshot file: the district builds the HNSW graph of the
snapshot's embeddings once, so that every terminal loads it instead of building it
(4-5 s of CPU per terminal for 10,000 citizens; docs/scale.md "Install cost").

Only the links travel, never the vectors: the payload is an hnswlib 0.8 index file
(layout in edge/store/graphcheck.py) with the vector bytes cut out of every level-0
record. Element ``j`` of the graph carries, as its label, the position ``p`` of its
embedding in the snapshot (citizen upserts in file order, each citizen's embeddings in
order). The terminal puts back its own unit vectors and its own labels
(``assemble``), then checks the whole file structurally (graphcheck) before hnswlib
loads it: the district's links can make the graph worse, never make the terminal read
outside its arrays.

Payload: the 96-byte hnswlib header (describing the full layout for ``dim``), then
``n`` records of (link block ``4 + 4 * maxM0`` bytes, u64 label), then the upper-level
lists exactly as hnswlib saved them.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from core.errors import MessageRejected
from sync.wire import MALFORMED

#: hnswlib 0.8 header (the same struct as edge/store/graphcheck.py)
HEADER = struct.Struct("<QQQQQQiIQQQdQ")


def _layout(header: bytes, dim: int) -> tuple[int, int, int]:
    """(n, link block bytes, full record bytes) of a header for ``dim``-d vectors."""
    (off0, _max_elements, n, per, label_off, data_off, _maxlevel, _entry, max_m, max_m0, m,
     _mult, _efc) = HEADER.unpack_from(header)
    links0 = 4 + 4 * max_m0
    if off0 != 0 or data_off != links0 or label_off != data_off + 4 * dim or (
            per != label_off + 8) or not 2 <= m <= 10_000 or max_m != m or max_m0 != 2 * m:
        raise MessageRejected(MALFORMED, f"index graph: header does not fit {dim}-d vectors")
    return n, links0, per


def strip(index_file: bytes, dim: int) -> bytes:
    """The payload of a saved hnswlib index file: its vectors cut out (district side)."""
    n, links0, per = _layout(index_file, dim)
    body = HEADER.size + n * per
    level0 = np.frombuffer(index_file, dtype=np.uint8, count=n * per,
                           offset=HEADER.size).reshape(n, per)
    keep = np.concatenate([level0[:, :links0], level0[:, per - 8:]], axis=1)
    return index_file[:HEADER.size] + keep.tobytes() + index_file[body:]


def params(payload: bytes, dim: int) -> tuple[int, int, int]:
    """(elements, M, ef_construction) of a payload; MessageRejected if its header is bad."""
    if len(payload) < HEADER.size:
        raise MessageRejected(MALFORMED, "index graph: shorter than its header")
    n, _, _ = _layout(payload, dim)
    fields = HEADER.unpack_from(payload)
    return n, int(fields[10]), int(fields[12])


def assemble(payload: bytes, unit: npt.NDArray[np.float32], first_label: int,
             capacity: int, out: BinaryIO) -> None:
    """Write to ``out`` a full hnswlib index file of ``payload``'s links, the terminal's
    ``unit`` vectors (row ``p`` = snapshot position ``p``) and labels ``first_label + p``,
    with room for ``capacity`` elements. MessageRejected (nothing written) if the payload
    does not fit the vectors (count, dimension, labels not a permutation, an element
    marked deleted); the links themselves are checked by graphcheck on the result,
    before hnswlib reads it."""
    dim = unit.shape[1]
    if len(payload) < HEADER.size:
        raise MessageRejected(MALFORMED, "index graph: shorter than its header")
    n, links0, per = _layout(payload, dim)
    if n != unit.shape[0] or capacity < n:
        raise MessageRejected(MALFORMED, f"index graph of {n} elements for "
                                         f"{unit.shape[0]} embeddings")
    stripped = links0 + 8
    if len(payload) < HEADER.size + n * stripped:
        raise MessageRejected(MALFORMED, "index graph: truncated")
    rows = np.frombuffer(payload, dtype=np.uint8, count=n * stripped,
                         offset=HEADER.size).reshape(n, stripped)
    positions = rows[:, links0:].copy().view("<u8").ravel()
    if n and (positions.max() >= n or np.bincount(positions.astype(np.int64),
                                                  minlength=n).max() != 1):
        raise MessageRejected(MALFORMED, "index graph: labels are not the snapshot positions")
    heads = rows[:, :4].copy().view("<u4").ravel()
    if n and (heads >> 16).any():
        raise MessageRejected(MALFORMED, "index graph: an element is marked deleted")
    level0 = np.empty((n, per), dtype=np.uint8)
    level0[:, :links0] = rows[:, :links0]
    level0[:, links0:per - 8] = np.ascontiguousarray(
        unit[positions.astype(np.int64)], dtype="<f4").view(np.uint8).reshape(n, 4 * dim)
    level0[:, per - 8:] = (positions.astype(np.int64) + first_label).astype("<u8").view(
        np.uint8).reshape(n, 8)
    header = bytearray(payload[:HEADER.size])
    struct.pack_into("<Q", header, 8, capacity)  # max_elements
    out.write(header)
    out.write(level0.data)  # no copy of the level-0 block
    out.write(memoryview(payload)[HEADER.size + n * stripped:])


__all__ = ["HEADER", "assemble", "params", "strip"]
