"""The district's calibration (district/calibration.py) on synthetic clustered embeddings
with a known stranger distribution, and the signed operating point from the change log
through the real publisher, the real broker and a terminal's sync engine to its Matcher."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from district import calibration as calib
from district.config import load_district_config
from district.log import DistrictLog
from district.publisher import Publisher
from edge.session.decision import Matcher, OperatingPoint, Verdict, adopt_published
from edge.store.gallery import GalleryStore
from edge.store.synthetic import ClusteredFaces
from edge.syncclient.engine import SyncEngine
from edge.syncclient.subscriber import TerminalSubscriber
from proto import sync_pb2 as pb
from sync.mqtt import BrokerSettings
from sync.wire import BAD_POINT, seal
from tests.broker import MosquittoBroker
from tests.sync_helpers import DISTRICT, EMBEDDER, new_district, new_key, wait_for
from tests.test_sync_district import motcua

DIM = 64
#: synthetic faces, 64-d: two photos of one person ~0.6, one "look" group ~0.2
FACES = ClusteredFaces(dim=DIM, seed=3)


#: the confirmation floor of these synthetic galleries (a district's comes from its model
#: pack, district.config): the FaceNet pack's, the value these tests were written with
FLOOR = 0.46

def gallery(n: int, start: int = 0) -> np.ndarray:
    return np.concatenate([FACES.samples(i, [0]) for i in range(start, start + n)])


def stranger_rates(g: np.ndarray, strangers: np.ndarray, point: calib.CalibratedPoint,
                   s: calib.CalibrationSettings) -> tuple[float, float]:
    top = -np.sort(-(strangers @ g.T), axis=1)[:, : s.confirm_candidates]
    sure = (top[:, 0] >= point.threshold) & (top[:, 0] - top[:, 1] >= point.margin)
    cands = (top >= point.confirm_threshold).sum(axis=1) if point.confirm_threshold else 0
    conf = np.where(~sure & (cands > 0), np.minimum(1, cands * s.guess_per_candidate), 0.0)
    return float(sure.mean()), float(np.mean(conf))


def test_loo_scores_exclude_self_and_duplicates() -> None:
    g = gallery(300)
    g[1] = g[0]  # one person enrolled twice
    loo = calib.loo_scores(g, keep=3, duplicate_score=0.85, row_block=64)
    full = g @ g.T
    np.fill_diagonal(full, -2)
    full[full >= 0.85] = -2
    want = -np.sort(-full, axis=1)[:, :3]
    assert np.allclose(loo.top, want, atol=1e-5)
    assert loo.duplicate_pairs == 1
    assert loo.top[0, 0] < 0.85  # its twin enrolment does not count as a stranger


def test_calibrated_point_meets_its_target_on_known_strangers() -> None:
    s = calib.CalibrationSettings(target_fpir=1e-2, min_gallery=100, confirm_floor=FLOOR)
    g = gallery(2000)
    point = calib.derive(g, s, pack_threshold=0.5)
    assert point.method == "calibrated" and point.gallery_size == 2000
    assert 0 < point.confirm_threshold < point.threshold <= 1
    assert point.predicted_fpir <= s.target_fpir
    assert point.predicted_sure <= s.sure_share * s.target_fpir + 1e-12
    # 20,000 strangers (identities never enrolled): 200 expected events at 1e-2
    strangers = gallery(20_000, start=10_000)
    sure, conf = stranger_rates(g, strangers, point, s)
    assert sure + conf <= 1.5 * s.target_fpir, (sure, conf)
    assert sure + conf >= 0.5 * s.target_fpir, (sure, conf)
    # the two paths are both used
    assert point.predicted_confirm > 0 and conf > 0


def test_threshold_rises_with_the_gallery() -> None:
    s = calib.CalibrationSettings(target_fpir=1e-2, min_gallery=100, confirm_floor=FLOOR)
    small = calib.derive(gallery(500), s, pack_threshold=0.5)
    big = calib.derive(gallery(4000), s, pack_threshold=0.5)
    assert big.threshold > small.threshold


def test_tail_fit_at_1e_3_is_near_the_strangers() -> None:
    """At 1e-3 of 3,000 the empirical tail has ~3 events; the GPD gives the rate."""
    s = calib.CalibrationSettings(min_gallery=100)
    g = gallery(3000)
    loo = calib.loo_scores(g, keep=3, duplicate_score=s.duplicate_score)
    pred = calib.Predictor.from_scores(loo, s)
    assert pred.tail is not None and pred.tail.xi < 0.5
    strangers = gallery(30_000, start=50_000)
    best = (strangers @ g.T).max(axis=1)
    t = float(np.quantile(best, 1 - 2e-3))  # 60 strangers above it
    measured = float((best >= t).mean())
    fitted = pred.tail.survival(t)
    assert 0.4 * measured <= fitted <= 2.5 * measured, (fitted, measured)


def test_tiny_gallery_falls_back_to_the_pack() -> None:
    point = calib.derive(gallery(20), calib.CalibrationSettings(), pack_threshold=0.54)
    assert point.method == "pack" and point.threshold == 0.54
    assert point.confirm_threshold == 0 and math.isnan(point.predicted_fpir)


def test_settings_are_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text("[calibration]\ntarget_fpir = 0.001\nrecompute_share = 0.2\n")
    assert load_district_config(cfg).calibration.recompute_share == 0.2
    for bad in ("target_fpir = 0", "target_fpir = 1.5", "target_fpir = nan",
                "confirm_tries = 0", "sure_share = 0"):
        cfg.write_text(f"[calibration]\n{bad}\n")
        with pytest.raises(ConfigError, match="calibration"):
            load_district_config(cfg)


def test_staleness_and_cli(tmp_path: Path) -> None:
    s = calib.CalibrationSettings()
    p = calib.derive(gallery(20), s, pack_threshold=0.54)
    assert not calib.is_stale(p, 22, s) and calib.is_stale(p, 23, s)
    assert calib.is_stale(p, 17, s) and calib.is_stale(None, 1, s)
    assert calib.is_stale(p, 20, dataclasses.replace(s, target_fpir=1e-2))
    db = tmp_path / "d.sqlite"
    dlog = new_district(db, dim=DIM)
    with dlog.transaction():
        for i, e in enumerate(gallery(1200)):
            dlog.upsert_citizen(f"c{i:05d}", masked_name="N. A***", embeddings=e[None])
    dlog.close()
    out = motcua("district", "calibration", "--db", str(db)).stdout
    assert "operating point: threshold" in out and "1200 citizens" in out
    assert "known limits" in out and "population shift" in out
    first = calib.stored(DistrictLog.open(db))
    assert first is not None and first.method == "calibrated"
    again = motcua("district", "calibration", "--db", str(db)).stdout  # not stale: kept
    assert calib.stored(DistrictLog.open(db)) == first and "threshold" in again
    motcua("district", "calibration", "--db", str(db), "--recompute")
    assert calib.stored(DistrictLog.open(db)).derived_at_ms > first.derived_at_ms


def _manifest(key, point: pb.OperatingPoint | None, head: int = 0) -> bytes:  # type: ignore[no-untyped-def]
    m = pb.Manifest(district_id=DISTRICT, epoch=1, head_seq=head, embedder_id=EMBEDDER,
                    dim=DIM, replay_from_seq=1, point=point)
    return seal(key, DISTRICT, pb.PAYLOAD_KIND_MANIFEST, m.SerializeToString())


def test_engine_refuses_nonsense_and_forged_points(tmp_path: Path) -> None:
    key, forger = new_key(), new_key()
    store = GalleryStore.open(tmp_path / "term", embedder_id=EMBEDDER, dim=DIM)
    eng = SyncEngine(store, district_id=DISTRICT, terminal_id="t1",
                     public_key=key.public_key(), spool_dir=tmp_path / "spool")
    good = pb.OperatingPoint(threshold=0.7, margin=0.08, confirm_threshold=0.5,
                             target_fpir=1e-3, predicted_fpir=9e-4, gallery_size=5000,
                             derived_at_ms=1000, method="calibrated")
    eng.handle("manifest", _manifest(forger, good))
    assert eng.point is None and eng.rejections["signature"] == 1
    for i, bad in enumerate((dict(threshold=float("nan")), dict(threshold=1.5),
                             dict(threshold=0.0), dict(confirm_threshold=0.7),
                             dict(confirm_threshold=0.9), dict(margin=float("inf")))):
        p = pb.OperatingPoint()
        p.CopyFrom(good)
        for k, v in bad.items():
            setattr(p, k, v)
        eng.handle("manifest", _manifest(key, p))
        assert eng.point is None and eng.rejections[BAD_POINT] == i + 1, bad
    seen = []
    eng.on_point = seen.append
    eng.handle("manifest", _manifest(key, good))
    assert eng.point is not None and eng.point.threshold == pytest.approx(0.7)
    assert len(seen) == 1
    older = pb.OperatingPoint()
    older.CopyFrom(good)
    older.derived_at_ms, older.threshold = 500, 0.3
    eng.handle("manifest", _manifest(key, older))  # an older point replayed: kept ours
    assert eng.point.threshold == pytest.approx(0.7)
    # persisted: a restarted engine has it before any manifest
    eng2 = SyncEngine(store, district_id=DISTRICT, terminal_id="t1",
                      public_key=key.public_key(), spool_dir=tmp_path / "spool")
    assert eng2.point == eng.point
    # a local [session] threshold wins over the district's point
    m = Matcher(store, OperatingPoint(0.54, 0.08, "model pack"), 5)
    assert not adopt_published(m, eng.point, 0.6) and m.point.source == "model pack"
    assert adopt_published(m, eng.point, 0.0)
    assert m.point.threshold == pytest.approx(0.7)
    assert m.point.confirm_threshold == pytest.approx(0.5)
    assert m.point.source == "district calibration (gallery 5000, target 0.001)"


def test_point_travels_signed_over_the_broker_to_the_matcher(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    dlog = new_district(tmp_path / "d.sqlite", dim=DIM)
    g = gallery(1100)
    with dlog.transaction():
        for i, e in enumerate(g):
            dlog.upsert_citizen(f"c{i:05d}", masked_name="N. A***", embeddings=e[None])
    key = new_key()
    fast = dict(reconnect_min_s=0.0, reconnect_max_s=0.5)
    settings = calib.CalibrationSettings(target_fpir=1e-2, confirm_floor=FLOOR)
    pub = Publisher(dlog, key, BrokerSettings(host=broker.host, port=broker.port, **fast),
                    calibration=settings, pack_threshold=0.54, calibration_check_s=0.2)
    store = GalleryStore.open(tmp_path / "term", embedder_id=EMBEDDER, dim=DIM)
    matcher = Matcher(store, OperatingPoint(0.54, 0.08, "model pack"), 5)
    sub = TerminalSubscriber(store, BrokerSettings(host=broker.host, port=broker.port, **fast),
                             district_id=DISTRICT, terminal_id="t1",
                             public_key=key.public_key(), spool_dir=tmp_path / "spool")
    sub.engine.on_point = lambda p: adopt_published(matcher, p, 0.0)
    pub.start()
    sub.start()
    try:
        wait_for(lambda: matcher.point.source.startswith("district calibration"),
                 timeout=60, what="the terminal adopted the district's point")
        point = calib.stored(dlog)
        assert point is not None and point.gallery_size == 1100
        assert matcher.point.threshold == pytest.approx(point.threshold, abs=1e-6)
        assert matcher.point.confirm_threshold == pytest.approx(point.confirm_threshold,
                                                                abs=1e-6)
        assert matcher.point.source == "district calibration (gallery 1100, target 0.01)"
        wait_for(lambda: store.citizen_count == 1100, timeout=60, what="gallery synced")
        # the matcher decides at it: an enrolled face is SURE, a close stranger CONFIRM/NO
        assert matcher.match(g[7]).verdict is Verdict.SURE
        # the gallery grows by > 10 %: re-derived and re-published on its own
        with dlog.transaction():
            for i, e in enumerate(gallery(200, start=5000)):
                dlog.upsert_citizen(f"n{i:05d}", masked_name="N. B***", embeddings=e[None])
        pub.notify()
        # wait on the matcher itself: the engine keeps the point before its on_point hook
        # hands it to the matcher
        wait_for(lambda: matcher.point.source
                 == "district calibration (gallery 1300, target 0.01)",
                 timeout=60, what="re-calibrated point adopted by the terminal's matcher")
        assert sub.engine.point is not None and sub.engine.point.gallery_size == 1300
    finally:
        sub.stop()
        pub.stop()
        dlog.close()
