"""Terminal outbox ("not me", ratings) -> real Mosquitto -> district reports table."""

from __future__ import annotations

from pathlib import Path

import pytest

from district.log import DistrictLog
from district.publisher import Publisher
from edge.session.audit import OutboxReporter
from edge.store.gallery import GalleryStore
from edge.syncclient.outbox import OutboxSender, to_pb
from edge.syncclient.subscriber import TerminalSubscriber
from motcua.cli import main
from proto import sync_pb2 as pb
from sync.mqtt import BrokerSettings, make_client
from tests.broker import MosquittoBroker
from tests.sync_helpers import DISTRICT, EMBEDDER, new_district, new_key, wait_for

FAST = dict(reconnect_min_s=0.0, reconnect_max_s=0.5, keepalive_s=5)


def settings(b: MosquittoBroker) -> BrokerSettings:
    return BrokerSettings(host=b.host, port=b.port, **FAST)  # type: ignore[arg-type]


def start_terminal(tmp: Path, b: MosquittoBroker, key, store: GalleryStore) -> TerminalSubscriber:  # type: ignore[no-untyped-def]
    return TerminalSubscriber(
        store,
        settings(b),
        district_id=DISTRICT,
        terminal_id="t1",
        public_key=key.public_key(),
        spool_dir=tmp,
        state_interval_s=0.2,
        outbox_dir=tmp / "state" / "outbox",
    ).start()


def rows(dlog: DistrictLog) -> list[tuple[str, str, str, str, int]]:
    return sorted((r[0], r[1], r[2], r[4], r[5]) for r in dlog.reports())


def test_not_me_and_rating_arrive_exactly_once_across_terminal_restart(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    dlog = new_district(tmp_path / "district.sqlite", dim=16)
    key = new_key()
    store = GalleryStore.open(tmp_path / "store", embedder_id=EMBEDDER, dim=16)
    publisher = Publisher(dlog, key, settings(broker)).start()
    outbox = OutboxReporter.in_state_dir(tmp_path / "state")
    # the session's own calls (edge/session/machine.py)
    outbox.report("not_me", {"terminal": "t1", "session": "s-1", "citizen_id": "c0000007",
                             "score": 0.71})
    outbox.report("rating", {"terminal": "t1", "session": "s-2", "stars": 4})
    term = start_terminal(tmp_path, broker, key, store)
    try:
        assert publisher.wait_connected(10)
        expected = [("t1", "s-1", "not_me", "c0000007", 0), ("t1", "s-2", "rating", "", 4)]
        wait_for(lambda: rows(dlog) == expected, 15)
        assert term.outbox is not None
        wait_for(lambda: term.outbox is not None and term.outbox.sent == 2, 10)
        delivered = (tmp_path / "state" / "outbox" / "reports.delivered").read_text()
        assert delivered.splitlines() == ["not_me\ts-1", "rating\ts-2"]
        # the outbox itself is untouched (the session appends to it concurrently)
        assert len(outbox.read()) == 2

        # crash after the PUBACKs but before the marks were written: kill the terminal
        # and lose its delivered file; the restart sends both again, the district
        # keeps one row each
        term.stop(graceful=False)
        (tmp_path / "state" / "outbox" / "reports.delivered").unlink()
        outbox.report("rating", {"terminal": "t1", "session": "s-3", "stars": 1})
        term = start_terminal(tmp_path, broker, key, store)
        wait_for(lambda: term.outbox is not None and term.outbox.sent == 3, 15)
        wait_for(lambda: publisher.report_writer.duplicates == 2, 10)
        assert rows(dlog) == expected + [("t1", "s-3", "rating", "", 1)]
        assert publisher.report_writer.stored == 3

        # a plain restart sends nothing again
        term.stop()
        term = start_terminal(tmp_path, broker, key, store)
        wait_for(lambda: term.connected.is_set(), 10)
        assert term.outbox is not None and term.outbox.pending() == []
        assert publisher.report_writer.duplicates == 2

        # forged / malformed reports are counted and dropped, not stored: another
        # terminal's id in t1's topic, garbage bytes, a 9-star rating
        bad = make_client("forger", settings(broker))
        bad.connect(broker.host, broker.port)
        bad.loop_start()
        topic = publisher.topics.report("t1")
        forged = pb.TerminalReport(terminal_id="t2", district_id=DISTRICT, session_id="x",
                                   kind=pb.TerminalReport.KIND_NOT_ME)
        nine = pb.TerminalReport(terminal_id="t1", district_id=DISTRICT, session_id="y",
                                 kind=pb.TerminalReport.KIND_RATING, rating=9)
        for payload in (forged.SerializeToString(), b"\xff\x00garbage", nine.SerializeToString()):
            bad.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_for(lambda: publisher.stats.bad_reports == 3, 10)
        bad.loop_stop()
        bad.disconnect()
        assert len(rows(dlog)) == 3

        # the district command shows the table
        assert main(["district", "reports", "--db", str(tmp_path / "district.sqlite")]) == 0
        out = capsys.readouterr().out
        assert "3 report(s)" in out and "not_me" in out and "c0000007" in out
    finally:
        term.stop()
        publisher.stop()
        store.close()


def test_bad_outbox_lines_are_skipped_and_kept(tmp_path: Path) -> None:
    """A rating without stars or an unknown kind is not sent; the line stays in the file."""
    ob = OutboxReporter.in_state_dir(tmp_path)
    ob.report("rating", {"session": "s-1", "stars": 0})
    ob.report("bogus", {"session": "s-2"})
    ob.report("not_me", {"session": "s-3", "citizen_id": "c1"})
    with open(ob.path, "a") as f:
        f.write('{"kind": "rating", "sess')  # torn by a power cut
    sender = OutboxSender(tmp_path / "outbox", terminal_id="t1", district_id=DISTRICT)
    assert [k for k, _ in sender.pending()] == ["not_me\ts-3"]
    assert sender.bad_lines == 2
    with pytest.raises(ValueError):
        to_pb({"kind": "rating", "session": "s", "stars": 6}, terminal_id="t", district_id="d")
    sent: list[bytes] = []
    assert sender.pump(lambda p: sent.append(p) or len(sent), 0.0) == 1
    assert sender.pump(lambda p: sent.append(p) or len(sent), 1.0) == 0  # in flight
    sender.acked(1)
    assert sender.settle() == 1 and sender.pending() == []
    assert len(ob.read()) == 3


def test_outbox_is_compacted_and_no_report_is_lost(tmp_path: Path) -> None:
    """Delivered reports leave the disk (the outbox would otherwise grow for ever and be
    re-read twice a second); undelivered ones, late lines and bad lines stay."""
    import os
    import time

    ob = OutboxReporter.in_state_dir(tmp_path)
    outbox = tmp_path / "outbox"
    for i in range(3):
        ob.report("rating", {"session": f"s-{i}", "stars": 4})
    sender = OutboxSender(outbox, terminal_id="t1", district_id=DISTRICT)
    sent: list[bytes] = []

    def publish(p: bytes) -> int:
        sent.append(p)
        return len(sent)

    assert sender.pump(publish, 0.0) == 3
    sender.acked(1)
    sender.acked(2)
    assert sender.settle() == 2
    later = time.time() + 3600
    assert sender.compact(later) == 0  # s-2 is not delivered: the file stays as it is
    assert ob.path.exists() and len(ob.read()) == 3
    sender.acked(3)
    assert sender.settle() == 1
    assert sender.compact() == 0  # all delivered: renamed aside, but too fresh to delete
    rotated = outbox / "reports-000001.jsonl"
    assert rotated.exists() and not ob.path.exists()
    # a line that raced the rename lands in the renamed file: it is still sent
    with open(rotated, "a", encoding="utf-8") as fh:
        fh.write('{"kind": "not_me", "session": "late", "citizen_id": "c9"}\n')
    ob.report("not_me", {"session": "s-new", "citizen_id": "c1"})  # starts a new file
    assert [k for k, _ in sender.pending()] == ["not_me\tlate", "not_me\ts-new"]
    assert sender.compact(later) == 0  # "late" is not delivered: nothing deleted
    sender.pump(publish, 100.0)
    sender.acked(4)  # "late"
    assert sender.settle() == 1
    assert sender.compact(later) == 1  # the renamed file is gone now
    assert not rotated.exists()
    # reports.delivered keeps only keys of lines still on disk (s-new is not delivered)
    assert (outbox / "reports.delivered").read_text() == ""
    restarted = OutboxSender(outbox, terminal_id="t1", district_id=DISTRICT)
    assert [k for k, _ in restarted.pending()] == ["not_me\ts-new"]
    assert sorted(os.listdir(outbox)) == ["reports.delivered", "reports.jsonl",
                                          "reports.jsonl.lock"]


def test_outbox_compaction_keeps_a_file_with_a_bad_line(tmp_path: Path) -> None:
    import time

    ob = OutboxReporter.in_state_dir(tmp_path)
    ob.report("rating", {"session": "s-1", "stars": 0})  # not a valid report
    ob.report("not_me", {"session": "s-2", "citizen_id": "c1"})
    sender = OutboxSender(tmp_path / "outbox", terminal_id="t1", district_id=DISTRICT)
    assert sender.pump(lambda p: 1, 0.0) == 1
    sender.acked(1)
    sender.settle()
    assert sender.compact(time.time() + 3600) == 0
    kept = tmp_path / "outbox" / "reports-000001.jsonl"
    assert not ob.path.exists() and len(kept.read_text().splitlines()) == 2
    assert sender.pending() == [] and sender.compact(time.time() + 7200) == 0
    assert kept.exists()  # for a technician: it holds a line that could not be sent


def test_outbox_compaction_without_an_outbox_is_quiet(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    sender = OutboxSender(tmp_path / "outbox", terminal_id="t1", district_id=DISTRICT)
    assert sender.compact() == 0 and sender.pending() == []
    assert not caplog.records and not (tmp_path / "outbox").exists()


def test_outbox_redaction_without_an_outbox_is_quiet(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    # the demo's first snapshot redacts before any report was written: no "cannot redact"
    sender = OutboxSender(tmp_path / "outbox", terminal_id="t1", district_id=DISTRICT)
    assert sender.redact_citizens(lambda _cid: False) == 0
    assert not caplog.records and not (tmp_path / "outbox").exists()


def test_outbox_keeps_a_report_until_the_districts_receipt(tmp_path: Path) -> None:
    """With receipts (the manifest says so) a PUBACK is not delivery: the report is sent
    again every receipt wait until the district's receipt, which is fsynced."""
    from edge.syncclient.outbox import RECEIPT_WAIT_S

    ob = OutboxReporter.in_state_dir(tmp_path)
    ob.report("rating", {"session": "s-1", "stars": 4})
    ob.report("not_me", {"session": "s-2", "citizen_id": "c1"})
    sender = OutboxSender(tmp_path / "outbox", terminal_id="t1", district_id=DISTRICT)
    sender.want_receipts = True
    sent: list[bytes] = []

    def publish(p: bytes) -> int:
        sent.append(p)
        return len(sent)

    assert sender.pump(publish, 0.0) == 2
    assert all(pb.TerminalReport.FromString(p).wants_receipt for p in sent)
    sender.acked(1)
    sender.acked(2)
    assert sender.settle(now=0.0) == 0  # the broker has them; the district may not
    assert (sender.unacknowledged(), sender.awaiting(), len(sender.pending())) == (0, 2, 2)
    assert sender.pump(publish, RECEIPT_WAIT_S - 1) == 0
    # a receipt naming nothing of ours changes nothing
    assert not sender.receipt(pb.TerminalReport.KIND_RATING, "s-9")
    assert not sender.receipt(pb.TerminalReport.KIND_NOT_ME, "s-1")  # wrong kind
    assert sender.receipt(pb.TerminalReport.KIND_RATING, "s-1")
    assert not sender.receipt(pb.TerminalReport.KIND_RATING, "s-1")  # already
    # no receipt for s-2 (its worker died): sent again, and only it
    assert sender.pump(publish, RECEIPT_WAIT_S) == 1
    assert pb.TerminalReport.FromString(sent[-1]).session_id == "s-2"
    restarted = OutboxSender(tmp_path / "outbox", terminal_id="t1", district_id=DISTRICT)
    assert [k for k, _ in restarted.pending()] == ["not_me\ts-2"]  # s-1's receipt is on disk
    # the receipt may overtake the PUBACK: still delivered
    assert sender.receipt(pb.TerminalReport.KIND_NOT_ME, "s-2")
    sender.acked(3)
    assert sender.settle(now=RECEIPT_WAIT_S) == 0 and sender.pending() == []
    assert sender.awaiting() == 0


def test_a_receipt_is_for_one_terminal_and_never_reaches_the_engine() -> None:
    """Receipts are signed like every district message and name their terminal; the
    engine's parser refuses one (the subscriber hands them to the outbox)."""
    from core.errors import MessageRejected
    from sync import wire

    key = new_key()
    body = pb.ReportReceipt(district_id=DISTRICT, terminal_id="t1",
                            kind=pb.TerminalReport.KIND_RATING, session_id="s-1")
    payload = wire.seal(key, DISTRICT, pb.PAYLOAD_KIND_REPORT_RECEIPT, body.SerializeToString())
    assert wire.is_receipt(payload) and not wire.is_receipt(b"\xff\x00garbage")
    env = wire.open_envelope(payload, district_id=DISTRICT, public_key=key.public_key(),
                             max_bytes=1 << 20)
    assert wire.parse_receipt(env, "t1").session_id == "s-1"
    with pytest.raises(MessageRejected, match="another district or terminal"):
        wire.parse_receipt(env, "t2")
    with pytest.raises(MessageRejected, match="unexpected"):
        wire.parse_body(env)
    with pytest.raises(MessageRejected, match="signature"):
        wire.open_envelope(payload, district_id=DISTRICT, public_key=new_key().public_key(),
                           max_bytes=1 << 20)
