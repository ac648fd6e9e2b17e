"""One snapshot, many terminals: the district service builds a snapshot file once and
serves it over HTTP(S) with Range requests; the broker carries only the signed
descriptors (docs/scale.md). Real Mosquitto, a real district service (uvicorn on a free
port), real terminal subscribers with real stores."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from core.errors import ConfigError
from district.config import SnapshotsSection, load_district_config
from district.log import DistrictLog
from district.service import DistrictService
from edge.store.gallery import GalleryStore
from edge.syncclient.download import Downloader, DownloadError, TlsMaterial
from edge.syncclient.subscriber import TerminalSubscriber
from proto import sync_pb2 as pb
from sync.keys import load_private_key, load_public_key
from sync.localbroker import free_port
from sync.mqtt import BrokerSettings
from sync.wire import seal
from tests.broker import MosquittoBroker
from tests.certs import CA
from tests.district_helpers import district_keys, write_district_config
from tests.sync_helpers import EMBEDDER, add_citizens, new_key, reference_store, wait_for

DISTRICT = "q1"
DIM = 64


class Rig:
    """A district log, its service (publisher + ingest + snapshot server), terminals."""

    def __init__(self, tmp: Path, broker: MosquittoBroker, citizens: int,
                 snapshots: str = "") -> None:
        self.tmp, self.broker = tmp, broker
        self.db = tmp / "district.sqlite"
        self.dlog = DistrictLog.create(self.db, district_id=DISTRICT, embedder_id=EMBEDDER,
                                       dim=DIM)
        add_citizens(self.dlog, citizens)
        self.key_file, pub = district_keys(tmp)
        self.public_key = load_public_key(pub)
        cfg = write_district_config(tmp, broker, district=DISTRICT, db=self.db,
                                    sections=snapshots)
        self.cfg = load_district_config(cfg)
        self.svc: DistrictService | None = None
        self.terminals: list[TerminalSubscriber] = []
        self.stores: list[GalleryStore] = []
        self._ref: tuple[tuple[int, int], str] | None = None

    def start(self, listen: str = "127.0.0.1:0") -> DistrictService:
        self.svc = DistrictService(self.cfg, embedder=lambda: None,  # type: ignore[arg-type, return-value]
                                   snapshots_listen=listen).start()
        return self.svc

    @property
    def files(self):  # type: ignore[no-untyped-def]
        assert self.svc is not None and self.svc.snapshot_files is not None
        return self.svc.snapshot_files

    def terminal(self, name: str, *, settings: BrokerSettings | None = None,
                 **kw: object) -> TerminalSubscriber:
        store = GalleryStore.open(self.tmp / "stores" / name, embedder_id=EMBEDDER, dim=DIM)
        self.stores.append(store)
        t = TerminalSubscriber(
            store,
            settings or BrokerSettings(host=self.broker.host, port=self.broker.port,
                                       reconnect_min_s=0.0, reconnect_max_s=0.5),
            district_id=DISTRICT, terminal_id=name, public_key=self.public_key,
            spool_dir=self.tmp / "spool" / name, gap_timeout_s=0.3, request_retry_s=0.5,
            state_interval_s=0.2, download_retry_s=0.0, **kw)  # type: ignore[arg-type]
        self.terminals.append(t)
        return t.start()

    def expected_hash(self) -> str:
        key = (self.dlog.head_seq, self.dlog.epoch)
        if self._ref is None or self._ref[0] != key:
            store = GalleryStore.open(self.tmp / "stores" / f"ref-{key}", embedder_id=EMBEDDER,
                                      dim=DIM)
            self.stores.append(store)
            self._ref = (key, reference_store(self.dlog, store).content_hash())
        return self._ref[1]

    def converged(self, t: TerminalSubscriber) -> bool:
        s = t.engine.store
        return (s.epoch == self.dlog.epoch and s.last_seq == self.dlog.head_seq
                and s.content_hash() == self.expected_hash())

    def close(self) -> None:
        for t in self.terminals:
            t.stop()
        if self.svc is not None:
            self.svc.stop()
        for s in self.stores:
            s.close()
        self.dlog.close()


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker):  # type: ignore[no-untyped-def]
    r = Rig(tmp_path, broker, citizens=1500)
    yield r
    r.close()


def test_new_epoch_many_terminals_one_file_broker_carries_announcements(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    """N terminals re-snapshot after new-epoch from ONE file; the broker's payload bytes
    to the terminals stay a few KB (descriptors, requests, manifests) whatever N, and a
    terminal that joins while the others download converges from the same file. The
    downloads go through a proxy that paces them (~1 s each), so that "while" holds."""
    port = free_port()
    proxy = CuttingProxy(("127.0.0.1", port), cut_after=None, pace_s=0.02)
    rig = Rig(tmp_path, broker, citizens=1500,
              snapshots=f'[snapshots]\nurl = "http://127.0.0.1:{proxy.port}"\n')
    try:
        _many_terminals(rig, port)
    finally:
        proxy.close()
        rig.close()


def _many_terminals(rig: Rig, port: int) -> None:
    rig.start(listen=f"127.0.0.1:{port}")
    n = 4
    terminals = [rig.terminal(f"t{i}") for i in range(n)]
    wait_for(lambda: all(rig.converged(t) for t in terminals), 60, "initial sync")
    assert rig.files.built == 1
    # the engine counts the file a moment after the store commit that `converged` sees
    wait_for(lambda: all(t.engine.snapshot_files_applied >= 1 for t in terminals), 10,
             "the snapshot files counted")
    assert all(t.engine.snapshot_files_applied == 1 for t in terminals)
    assert all(t.engine.rejections.get("snapshot_failed", 0) == 0 for t in terminals)

    before = sum(t.bytes_received for t in terminals)
    http_before = [t.downloader.bytes_received for t in terminals]  # type: ignore[union-attr]
    assert rig.dlog.new_epoch() == 2
    # a terminal joining mid-transfer: started while the others are downloading
    def downloading() -> bool:
        return any(t.engine.download is not None
                   and t.downloader.bytes_received > b  # type: ignore[union-attr]
                   for t, b in zip(terminals, http_before, strict=True))

    wait_for(downloading, 30, "a download in progress")
    late = rig.terminal("late")
    wait_for(lambda: all(rig.converged(t) for t in [*terminals, late]), 60, "new epoch")

    assert rig.files.built == 2  # one file for all five
    kept = rig.files._kept()
    size = kept[0][0].size
    assert len(kept) == 2 and kept[0][0].epoch == 2
    mqtt_bytes = sum(t.bytes_received for t in terminals) - before
    http_bytes = [t.downloader.bytes_received - b  # type: ignore[union-attr]
                  for t, b in zip(terminals, http_before, strict=True)]
    print(f"\nsnapshot file {size} bytes; {n} terminals re-snapshot: broker payload to "
          f"terminals {mqtt_bytes} bytes ({mqtt_bytes / size:.4f} x), HTTP {http_bytes}")
    assert http_bytes == [size] * n
    assert mqtt_bytes < 0.05 * size
    assert rig.svc is not None and rig.svc.publisher.stats.snapshots == 0  # no MQTT chunks
    # live changes of epoch 2 still arrive as batches
    rig.dlog.update_dossier("HS-0000003", stage="mới")
    wait_for(lambda: all(rig.converged(t) for t in [*terminals, late]), 30, "live batch")


class CuttingProxy:
    """A TCP proxy (a network boundary fake) that closes the first connection after
    ``cut_after`` bytes from the server (None: never); later connections pass whole.
    ``pace_s``: a pause after each 16 KiB piece (a slow link)."""

    def __init__(self, target: tuple[str, int], cut_after: int | None,
                 pace_s: float = 0.0) -> None:
        self.target, self.cut_after, self.pace_s = target, cut_after, pace_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.cut_after if self.connections == 1 else None
            threading.Thread(target=self._pipe, args=(client, limit), daemon=True).start()

    def _pipe(self, client: socket.socket, limit: int | None) -> None:
        upstream = socket.create_connection(self.target)
        request = client.recv(65536)
        self.requests.append(request)
        upstream.sendall(request)
        sent = 0
        try:
            while True:
                data = upstream.recv(16384)
                if not data:
                    break
                if self.pace_s:
                    time.sleep(self.pace_s)  # a slow link, not a synchronisation
                if limit is not None and sent + len(data) >= limit:
                    client.sendall(data[: limit - sent])
                    break  # cut: close both ends mid-body
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def test_download_cut_midway_resumes_from_where_it_was(tmp_path: Path,
                                                       broker: MosquittoBroker) -> None:
    """The descriptor announces a URL behind a proxy that cuts the first connection at
    ~40%: the terminal's next GET asks Range from what it has; the file crosses the
    wire once; the terminal converges."""
    port = free_port()
    proxy = CuttingProxy(("127.0.0.1", port), cut_after=0)
    rig = Rig(tmp_path, broker, citizens=1500,
              snapshots=f'[snapshots]\nurl = "http://127.0.0.1:{proxy.port}"\n')
    try:
        rig.start(listen=f"127.0.0.1:{port}")
        # build the file first, to cut it at a known share
        sealed = rig.files.descriptor_for(rig.dlog, 0)
        size = pb.SnapshotFile.FromString(pb.Envelope.FromString(sealed).body).size
        proxy.cut_after = int(size * 0.4)
        t = rig.terminal("t-cut")
        wait_for(lambda: rig.converged(t), 60, "converged after the cut")
        d = t.downloader
        assert d is not None
        assert proxy.connections == 2
        assert d.range_starts[0] == 0 and 0.3 * size < d.range_starts[1] < 0.45 * size
        assert b"range: bytes=" in proxy.requests[1].lower()
        assert d.bytes_received == size  # nothing fetched twice
        assert rig.files.built == 1 and t.engine.snapshot_files_applied == 1
    finally:
        proxy.close()
        rig.close()


def test_part_file_survives_a_restart_and_is_resumed(rig: Rig) -> None:
    """A download stopped by a cut with no retry left keeps its part file; a new
    downloader (the terminal after a restart) resumes it with a Range request."""
    rig.start()
    sealed = rig.files.descriptor_for(rig.dlog, 0)
    desc = pb.SnapshotFile.FromString(pb.Envelope.FromString(sealed).body)
    assert rig.svc is not None and rig.svc.snapshot_server is not None
    proxy = CuttingProxy(("127.0.0.1", int(desc.url.split(":")[2].split("/")[0])),
                         cut_after=desc.size // 2)
    try:
        via_proxy = pb.SnapshotFile()
        via_proxy.CopyFrom(desc)
        via_proxy.url = desc.url.replace(desc.url.split("/")[2], f"127.0.0.1:{proxy.port}")
        spool = rig.tmp / "spool-r"
        first = Downloader(spool, "t-r", retries=1, retry_s=0.0)
        with pytest.raises(DownloadError, match="connection ended"):
            first.fetch(via_proxy)
        part = first.part_path(desc.snapshot_id)
        have = part.stat().st_size
        assert 0 < have < desc.size
        second = Downloader(spool, "t-r", retries=1, retry_s=0.0)
        assert second.fetch(via_proxy) == part
        assert second.range_starts == [have]
        assert second.bytes_received == desc.size - have
    finally:
        proxy.close()


def test_tampered_file_is_refused_nothing_installed_then_mqtt_fallback(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    """Bytes changed in the district's file: the terminal deletes the download, counts a
    failed snapshot naming the SHA-256, installs nothing from it, and its next request
    asks for MQTT chunks (the fallback), which converge."""
    rig = Rig(tmp_path, broker, citizens=300)
    try:
        rig.start()
        sealed = rig.files.descriptor_for(rig.dlog, 0)
        desc = pb.SnapshotFile.FromString(pb.Envelope.FromString(sealed).body)
        path = rig.files.path_of(desc.snapshot_id)
        assert path is not None
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01  # inside an embedding: still valid protobuf
        path.write_bytes(bytes(data))
        t = rig.terminal("t-bad", snapshot_retry_s=0.0)
        wait_for(lambda: rig.converged(t), 60, "converged by the MQTT fallback")
        assert t.engine.snapshot_files_applied == 0
        assert t.engine.rejections["snapshot_failed"] == 1
        assert t.engine.snapshots_applied == 1
        assert rig.svc is not None and rig.svc.publisher.stats.snapshots == 1
        assert not list((rig.tmp / "spool" / "t-bad").glob("snapfile-*"))
    finally:
        rig.close()


def test_forged_wrong_and_oversized_descriptors_are_refused(rig: Rig) -> None:
    """Descriptors straight into a real terminal's engine: one signed by another key, one
    of the district whose SHA-256 is wrong, one larger than the terminal's bound, and a
    server sending more than the signed size. Nothing is installed."""
    rig.start()
    sealed = rig.files.descriptor_for(rig.dlog, 0)
    good = pb.SnapshotFile.FromString(pb.Envelope.FromString(sealed).body)
    key = load_private_key(rig.key_file)
    store = GalleryStore.open(rig.tmp / "stores" / "direct", embedder_id=EMBEDDER, dim=DIM)
    rig.stores.append(store)
    from edge.syncclient.engine import SyncEngine

    eng = SyncEngine(store, district_id=DISTRICT, terminal_id="t-x",
                     public_key=rig.public_key, spool_dir=rig.tmp / "spool-x",
                     accepts_file=True, max_snapshot_file_bytes=good.size + 10)
    eng._need_snapshot = True

    # 1. signed by another key
    eng.handle("direct", seal(new_key(), DISTRICT, pb.PAYLOAD_KIND_SNAPSHOT_FILE,
                              good.SerializeToString()))
    assert eng.rejections["signature"] == 1 and eng.download is None
    # 2. oversized for this terminal
    big = pb.SnapshotFile()
    big.CopyFrom(good)
    big.size = good.size + 11
    eng.handle("direct", seal(key, DISTRICT, pb.PAYLOAD_KIND_SNAPSHOT_FILE,
                              big.SerializeToString()))
    assert eng.rejections["oversized"] == 1 and eng.download is None
    # 3. on the batch topic
    eng.handle("batch", sealed)
    assert eng.rejections["malformed"] == 1 and eng.download is None
    # 4. district-signed but with a wrong SHA-256: downloaded, refused, deleted
    wrong = pb.SnapshotFile()
    wrong.CopyFrom(good)
    wrong.sha256 = bytes(32)
    eng.handle("direct", seal(key, DISTRICT, pb.PAYLOAD_KIND_SNAPSHOT_FILE,
                              wrong.SerializeToString()))
    d = eng.take_download()
    assert d is not None and d.sha256 == bytes(32)
    dl = Downloader(rig.tmp / "spool-x", "t-x", retries=1, retry_s=0.0)
    with pytest.raises(DownloadError, match="SHA-256") as err:
        dl.fetch(d)
    assert not dl.part_path(d.snapshot_id).exists()
    eng.download_failed(d, str(err.value))
    assert eng.rejections["snapshot_failed"] == 1
    # 5. the server sends more than the signed size (a shorter size signed)
    short = pb.SnapshotFile()
    short.CopyFrom(good)
    short.size = good.size - 100
    with pytest.raises(DownloadError, match="more than the signed size"):
        dl.fetch(short)
    assert store.last_seq == 0 and store.citizen_count == 0
    assert eng.snapshots_applied == 0


def test_tls_server_needs_a_district_client_certificate(tmp_path: Path,
                                                        broker: MosquittoBroker) -> None:
    """With [snapshots] tls_cert/client_ca, a downloader with the terminal's certificate
    gets the file; one without a certificate, or with another CA's, does not."""
    ca = CA(tmp_path / "pki", "district-ca")
    other = CA(tmp_path / "pki-other", "other-ca")
    srv_cert, srv_key = ca.issue("localhost", server=True)
    term_cert, term_key = ca.issue("t-tls")
    bad_cert, bad_key = other.issue("t-tls")
    rig = Rig(tmp_path, broker, citizens=200, snapshots=f"""[snapshots]
tls_cert = "{srv_cert}"
tls_key = "{srv_key}"
client_ca = "{ca.cert_path}"
""")
    try:
        rig.start()
        sealed = rig.files.descriptor_for(rig.dlog, 0)
        desc = pb.SnapshotFile.FromString(pb.Envelope.FromString(sealed).body)
        assert desc.url.startswith("https://127.0.0.1:")
        for name, tls in (("none", TlsMaterial(ca.cert_path)),
                          ("foreign", TlsMaterial(ca.cert_path, bad_cert, bad_key))):
            with pytest.raises(DownloadError, match="failed 1 times"):
                Downloader(tmp_path / f"spool-{name}", "t-tls", tls=tls, retries=1,
                           retry_s=0.0).fetch(desc)
        ok = Downloader(tmp_path / "spool-ok", "t-tls", retries=1, retry_s=0.0,
                        tls=TlsMaterial(ca.cert_path, term_cert, term_key))
        assert ok.fetch(desc).stat().st_size == desc.size
    finally:
        rig.close()


def test_snapshots_config_refuses_clear_text_beyond_loopback() -> None:
    with pytest.raises(ConfigError, match="tls_cert: required"):
        SnapshotsSection(listen="0.0.0.0:8471").validate("snapshots")
    with pytest.raises(ConfigError, match="client_ca"):
        SnapshotsSection(listen="0.0.0.0:8471", tls_cert=Path("a"),
                         tls_key=Path("b")).validate("snapshots")
    SnapshotsSection(listen="127.0.0.1:8471").validate("snapshots")


def test_deleted_citizen_removes_the_files_holding_them(rig: Rig) -> None:
    """Right to be forgotten: a citizen deleted after a kept file makes the sweep remove
    that file (embeddings and all), and the next request gets a new file without them;
    a file with only other changes after it is reused."""
    rig.start()
    first = pb.SnapshotFile.FromString(pb.Envelope.FromString(
        rig.files.descriptor_for(rig.dlog, 0)).body)
    rig.dlog.update_dossier("HS-0000001", stage="mới")  # not a deletion: still reused
    assert rig.files.sweep(rig.dlog) == 0
    again = pb.Envelope.FromString(rig.files.descriptor_for(rig.dlog, 0)).body
    assert pb.SnapshotFile.FromString(again).snapshot_id == first.snapshot_id
    rig.dlog.delete_citizen("c0000007")
    assert rig.files.sweep(rig.dlog) == 1
    assert rig.files.path_of(first.snapshot_id) is None
    assert not list(rig.files.dir.glob(f"{first.snapshot_id}*"))
    with pytest.raises(DownloadError) as gone:  # a terminal holding the old descriptor
        Downloader(rig.tmp / "spool-g", "t-g", retries=1, retry_s=0.0).fetch(first)
    assert gone.value.gone  # 404: asks again, no failure counted
    new = pb.SnapshotFile.FromString(pb.Envelope.FromString(
        rig.files.descriptor_for(rig.dlog, 0)).body)
    assert new.snapshot_id != first.snapshot_id
    assert new.citizen_count == first.citizen_count - 1
    path = rig.files.path_of(new.snapshot_id)
    assert path is not None and b"c0000007" not in path.read_bytes()


def test_server_counts_the_bytes_it_sends_on_metrics(rig: Rig) -> None:
    """The district's side of the re-snapshot traffic (bench/fleet.py
    ``resnapshot_http_bytes``): a whole GET and a Range GET add exactly the body bytes
    sent, and /metrics reports them."""
    import http.client
    import urllib.parse

    from prometheus_client import generate_latest

    rig.start()
    desc = pb.SnapshotFile.FromString(
        pb.Envelope.FromString(rig.files.descriptor_for(rig.dlog, 0)).body)
    assert rig.files.bytes_served == 0
    url = urllib.parse.urlsplit(desc.url)
    for headers, want in (({}, desc.size), ({"Range": "bytes=1000-"}, desc.size - 1000)):
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
        try:
            conn.request("GET", url.path, headers=headers)
            body = conn.getresponse().read()
        finally:
            conn.close()
        assert len(body) == want
    assert rig.files.bytes_served == 2 * desc.size - 1000
    assert rig.svc is not None
    text = generate_latest(rig.svc.metrics.registry).decode()
    served = [float(line.split()[1]) for line in text.splitlines()
              if line.startswith("motcua_district_snapshot_http_bytes_total ")]
    assert served == [2 * desc.size - 1000]
    assert "motcua_district_snapshot_files_built_total 1.0" in text
