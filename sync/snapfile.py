"""Snapshot files: one snapshot built once by the district, fetched by every terminal.

The file is a sequence of records, each a 4-byte big-endian length and a serialized
``SnapshotChunk`` (citizens, then dossiers, ~1 MiB each, indexes 0..n-1, ``last`` on the
final one; before the last one, records carrying the index graph in ``index_graph``
instead of changes: sync/snapgraph.py). It is not signed record by record: the signed
``SnapshotFile`` descriptor (``Envelope`` kind ``PAYLOAD_KIND_SNAPSHOT_FILE``) gives its
exact size and SHA-256, which the terminal checks before it reads a record
(docs/scale.md, docs/sync.md).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import BinaryIO

from google.protobuf.message import DecodeError

from core.errors import MessageRejected
from proto import sync_pb2 as pb
from sync.wire import MALFORMED, OVERSIZED

#: record header: the length of the serialized chunk that follows
HEADER = struct.Struct(">I")
#: a record is one ~1 MiB chunk; the terminal refuses anything over its message limit
#: anyway, this bounds what one length field can make a reader allocate
MAX_RECORD_BYTES = 4 << 20
#: snapshot ids are uuid4 hex (also the file name: no path characters possible)
SNAPSHOT_ID = re.compile(r"[0-9a-f]{32}")
#: the URL path under which the district service serves a snapshot file
URL_PATH = "/v1/snapshots/"
#: a descriptor's URL: http(s), bounded (it is signed, but a long one is a bug)
MAX_URL_CHARS = 512


def write_record(fh: BinaryIO, chunk: bytes) -> int:
    """Append one serialized chunk; returns the bytes written."""
    if len(chunk) > MAX_RECORD_BYTES:
        raise ValueError(f"snapshot record of {len(chunk)} bytes > {MAX_RECORD_BYTES}")
    fh.write(HEADER.pack(len(chunk)))
    fh.write(chunk)
    return HEADER.size + len(chunk)


def read_chunks(fh: BinaryIO, desc: pb.SnapshotFile) -> Iterator[pb.SnapshotChunk]:
    """The file's chunks in order, each checked against the descriptor (same district,
    epoch, embedder, snapshot and change number; consecutive indexes; ``last`` on the
    final record only); MessageRejected(MALFORMED) otherwise."""
    index = 0
    seen_last = False
    while True:
        head = fh.read(HEADER.size)
        if not head:
            break
        if seen_last:
            raise MessageRejected(MALFORMED, "snapshot file: records after the last chunk")
        if len(head) != HEADER.size:
            raise MessageRejected(MALFORMED, "snapshot file: truncated record header")
        (n,) = HEADER.unpack(head)
        if n > MAX_RECORD_BYTES:
            raise MessageRejected(OVERSIZED, f"snapshot file: record of {n} bytes")
        data = fh.read(n)
        if len(data) != n:
            raise MessageRejected(MALFORMED, "snapshot file: truncated record")
        chunk = pb.SnapshotChunk()
        try:
            chunk.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise MessageRejected(MALFORMED, f"snapshot file record {index}: {exc}") from None
        if (chunk.district_id != desc.district_id or chunk.epoch != desc.epoch
                or chunk.embedder_id != desc.embedder_id or chunk.dim != desc.dim
                or chunk.snapshot_id != desc.snapshot_id or chunk.last_seq != desc.last_seq
                or chunk.index != index):
            raise MessageRejected(MALFORMED, f"snapshot file record {index} does not match "
                                             "its descriptor")
        seen_last = chunk.last
        index += 1
        yield chunk
    if not seen_last:
        raise MessageRejected(MALFORMED, "snapshot file without its last chunk")


def check_descriptor(d: pb.SnapshotFile, max_bytes: int) -> None:
    """Refuse a descriptor the terminal cannot or must not fetch (MessageRejected)."""
    if not SNAPSHOT_ID.fullmatch(d.snapshot_id):
        raise MessageRejected(MALFORMED, "snapshot file: bad id")
    if len(d.sha256) != 32 or d.size <= 0:
        raise MessageRejected(MALFORMED, "snapshot file: no size or SHA-256")
    if d.size > max_bytes:
        raise MessageRejected(OVERSIZED, f"snapshot file of {d.size} bytes > {max_bytes}")
    if (len(d.url) > MAX_URL_CHARS or not d.url.startswith(("http://", "https://"))
            or not d.url.endswith(URL_PATH + d.snapshot_id)):
        raise MessageRejected(MALFORMED, "snapshot file: bad URL")


__all__ = ["HEADER", "MAX_RECORD_BYTES", "SNAPSHOT_ID", "URL_PATH", "check_descriptor",
           "read_chunks", "write_record"]
