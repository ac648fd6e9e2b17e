"""District side of a delete: ``DistrictLog.delete_citizen`` with many stored reports.

A log with ``--reports`` rating reports and a quarter as many survey answers and offers
(spread over 100,000 citizens, a few each), then 10 deletes timed one by one. The delete
blanks the citizen in those tables; without an index on their ``citizen_id`` each delete
scanned them whole inside the log's write transaction (docs/scale.md "Delete path").
``--code DIR`` runs it on another product tree (e.g. an export of an older commit).

    PYTHONPATH=. python bench/district_delete.py [--reports 400000] [--code DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: citizens the report rows name: a few rows each, as a district's ratings after a year
NAMED = 100_000
#: deletes timed
DELETES = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=400_000)
    ap.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    sys.path[0] = str(args.code)  # not bench/: bench/sync.py is not the sync package
    from district.log import DistrictLog

    n = args.reports
    work = Path(tempfile.mkdtemp(prefix="motcua-bench-ddel-"))
    dlog = DistrictLog.create(work / "d.sqlite", district_id="q1", embedder_id="e", dim=8)
    rng = np.random.default_rng(1)
    with dlog.transaction():
        for i in range(DELETES):
            dlog.upsert_citizen(f"c{i}", masked_name="x",
                                embeddings=rng.normal(size=(1, 8)).astype("f4"),
                                pin_hash=b"h" * 32, pin_salt=b"s" * 16)
    db = dlog._db
    with dlog.transaction():
        db.executemany("INSERT INTO reports VALUES (?, ?, 'rating', '2026', ?, 5, 0.9, 0)",
                       ((f"t{i % 50}", f"s{i}", f"c{i % NAMED}") for i in range(n)))
        db.executemany("INSERT INTO survey_answers VALUES (?, ?, ?, '2026', 5, '')",
                       ((f"t{i % 50}", f"s{i}", f"c{i % NAMED}") for i in range(n // 4)))
        db.executemany(
            "INSERT INTO survey_offers (token_sha256, terminal_id, session_id, citizen_id, "
            "offered_at, received_at, expires_at) VALUES (?, ?, ?, ?, 0, 0, 0)",
            ((i.to_bytes(8, "big"), f"t{i % 50}", f"s{i}", f"c{i % NAMED}")
             for i in range(n // 4)))
    indexes = [r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' "
        "AND tbl_name IN ('reports', 'survey_offers', 'survey_answers')")]
    took = []
    for k in range(DELETES):
        t = time.perf_counter()
        dlog.delete_citizen(f"c{k}")
        took.append(time.perf_counter() - t)
    dlog.close()
    print(f"{args.code}: {n} reports, {n // 4} survey answers and offers, indexes "
          f"{indexes or 'none'}: delete_citizen median {np.median(took) * 1000:.1f} ms, "
          f"max {max(took) * 1000:.1f} ms over {DELETES}")


if __name__ == "__main__":
    main()
