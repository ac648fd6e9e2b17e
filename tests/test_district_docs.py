"""docs/district.md's curl examples, run as written (bash, the real curl) against a real
district service (uvicorn on a free port, real Mosquitto, the real face pipeline for the
enrolment photo): every event kind is applied, the batch reports what the guide says,
the answers shown in the guide's comments are the ones the service gives."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from district.service import DistrictService
from tests.sync_helpers import wait_for
from tests.test_district_service import TOKEN, call, district

__all__ = ["district"]  # the fixture

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "district.md"


def curl_block() -> str:
    """The ```sh block of the section "### curl, one example of each kind"."""
    text = GUIDE.read_text()
    section = text.split("### curl, one example of each kind", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_guide_has_an_example_of_every_event_kind() -> None:
    from district.ingest import KINDS

    block = curl_block()
    for kind in KINDS:
        assert f'"kind":"{kind}"' in block, kind
    assert "/v1/events/batch" in block and "/readyz" in block and "/metrics" in block


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl (scripts/debian-packages.txt)")
def test_the_curl_examples_run_as_written(tmp_path: Path, district: DistrictService,
                                          media_dir: Path) -> None:
    svc = district  # the real face pipeline embeds the enrolment photo
    work = tmp_path / "operator"
    work.mkdir()
    shutil.copy(media_dir / "faces" / "barack_obama" / "1.jpg", work / "an.jpg")
    block = curl_block()
    # the guide's first two lines read the installed token and name the port; here the
    # test's service has its own
    assert block.startswith("TOKEN=$(sudo cat /var/lib/motcua-district/ingest.token)\n"
                            "API=http://127.0.0.1:8470\n")
    script = block.split("\n", 2)[2]
    wait_for(lambda: call(svc, "GET", "/readyz", token=None)[0] == 200, 20, "ready")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                          env={"PATH": "/usr/bin:/bin", "TOKEN": TOKEN, "API": svc.url},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    head = svc.log.head_seq
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    singles = [a for a in answers if "outcome" in a]
    assert [a["outcome"] for a in singles] == ["applied"] * 7, done.stdout
    assert re.fullmatch(r"\d{4,8}", singles[0]["issued_pin"])  # none given: one issued
    batch = next(a for a in answers if "results" in a)
    assert (batch["applied"], batch["duplicate"], batch["stale"], batch["rejected"]) == \
        (1, 1, 1, 0), batch
    assert "ok\nready\n" in done.stdout
    assert 'motcua_district_ingest_events_total{kind="citizen.deleted",outcome="applied"} 1.0' \
        in done.stdout
    assert head == 8  # enrol, create, status, stage, appointment, update, batch's 1, delete
    # the answers the guide shows in comments are the service's (the issued PIN varies)
    shown = [line[2:] for line in block.splitlines() if line.startswith("# {")]
    assert shown[0] == json.dumps(dict(singles[0], issued_pin="4821"), ensure_ascii=False,
                                  separators=(",", ":"))
    assert shown[1] == json.dumps(singles[1], ensure_ascii=False, separators=(",", ":"))
    assert shown[2].startswith(json.dumps({k: batch[k] for k in ("applied", "duplicate",
                                                                   "stale", "rejected")},
                                          separators=(",", ":"))[:-1] + ',"results":[')
