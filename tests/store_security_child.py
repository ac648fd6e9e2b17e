"""Child process for tests/test_store_security.py: runs a store in its own process so the
parent can SIGKILL it, or let it segfault, without touching pytest.

    python store_security_child.py delete DIR [SCRUB_S]
        fill 40 citizens (one vector each), checkpoint, delete citizen 7, print
        "deleted", then wait (the parent kills it)
    python store_security_child.py search DIR [unchecked]
        open the store, print "opened", search citizen 5's face, print "found <id>";
        ``unchecked`` disables the structural check of checkpoint files (to stand for a
        corruption the check does not know), so a bad graph reaches hnswlib
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_helpers import FACES, cid, fill, open_store  # noqa: E402

from edge.store import CitizenDelete  # noqa: E402

#: the citizen deleted by "delete"
DELETED = 7


def delete(directory: Path, scrub_s: str | None) -> None:
    settings: dict[str, object] = {"checkpoint_every": 10_000}
    fields = {f.name for f in dataclasses.fields(_settings())}
    if scrub_s is not None and "deletion_scrub_s" in fields:
        settings["deletion_scrub_s"] = float(scrub_s)
    s = open_store(directory, **settings)
    fill(s, 40, most=1)
    s.checkpoint()
    s.apply([CitizenDelete(s.last_seq + 1, cid(DELETED))], epoch=1)
    print("deleted", flush=True)
    sys.stdin.read()  # until the parent kills us (or closes stdin)


def _settings() -> type:
    from edge.config import StoreSettings

    return StoreSettings


def search(directory: Path, unchecked: bool) -> None:
    if unchecked:
        import edge.store.index as index_module

        if hasattr(index_module, "check_index_file"):
            index_module.check_index_file = lambda *a, **k: None  # type: ignore[assignment]
    s = open_store(directory)
    print("opened", flush=True)
    best = s.search(FACES.query(5), k=1)[0]
    print(f"found {best.citizen_id}", flush=True)
    s.close()


if __name__ == "__main__":
    mode, where = sys.argv[1], Path(sys.argv[2])
    extra = sys.argv[3] if len(sys.argv) > 3 else None
    if mode == "delete":
        delete(where, extra)
    else:
        search(where, extra == "unchecked")
