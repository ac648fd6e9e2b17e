"""The terminal's configuration: one TOML file, validated once, passed down as a tree.

Each section is a frozen dataclass; ``load_config`` checks every key and type and names
the offending key (``camera.fps: expected a number, got 'fast'``). Secrets (broker password,
private keys) are never in this file: the config holds the *path* of a file or the *name*
of an environment variable, read by :func:`read_secret`.

To add a section: write a dataclass with defaults and add it as a field of ``Config``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.net import is_loopback_host, split_hostport
from core.tomlconfig import build_section, read_secret, read_toml
from faces.settings import (
    DEFAULT_MODEL_DIR,
    DEFAULT_PACK,
    DetectorConfig,
    ModelsConfig,
    RuntimeConfig,
)
from sync.mqtt import BrokerConfig

__all__ = [
    "DEFAULT_MODEL_DIR", "DEFAULT_PACK", "ApiConfig", "CameraConfig", "Config", "DetectorConfig",
    "DisplayConfig", "ModelsConfig", "OpsConfig", "RuntimeConfig", "SessionConfig",
    "StoreSettings", "SyncConfig", "TerminalConfig", "config_from_dict", "is_loopback_host",
    "load_config", "read_secret",
]

@dataclasses.dataclass(frozen=True)
class CameraConfig:
    """Where frames come from and how the grabber treats the camera (``[camera]``)."""

    #: "0" or "/dev/video0" (V4L2), a video file, a folder of images, or rtsp:// http:// URL
    source: str = "0"
    #: "auto" guesses from ``source``; or one of "v4l2", "file", "images", "stream",
    #: "libcamera" (a Raspberry Pi camera module: ``source`` is its number, "0")
    kind: str = "auto"
    #: video file / image folder: start again at the end (a demo loop) instead of stopping
    loop: bool = False
    #: video file / image folder: deliver frames at their own rate like a camera would;
    #: false delivers as fast as they are read (tests, benchmarks)
    realtime: bool = True
    #: image folder: frames per second it plays at (images carry no timing)
    images_fps: float = 10.0
    #: libcamera: the command that streams the camera (rpicam-apps' rpicam-vid; older
    #: images call it libcamera-vid), with any arguments before the ones the source adds
    libcamera_cmd: tuple[str, ...] = ("rpicam-vid",)
    #: V4L2 and libcamera: requested capture size; 640x480 is what Pi cameras and cheap USB
    #: webcams give at full rate, and faces at kiosk distance are 80-200 px in it
    width: int = 640
    height: int = 480
    #: V4L2 and libcamera: requested capture rate
    fps: float = 30.0
    #: frames the loop processes per second with nobody in front: 4 notices a person
    #: within a quarter second while keeping idle CPU low on a Pi
    idle_fps: float = 4.0
    #: ... and while a face is present: 15 is enough to follow a head turn (which takes
    #: ~0.5 s) with several frames; more only costs CPU
    active_fps: float = 15.0
    #: reconnect backoff: first delay, doubled per failure up to the maximum (a camera
    #: replugged is back within a second or two; the maximum keeps log spam down)
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    #: stream and libcamera sources: give up opening / reading after this long (a dead RTSP camera
    #: would otherwise block the grabber for the FFmpeg default of 30 s)
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.kind not in ("auto", "v4l2", "libcamera", "file", "images", "stream"):
            raise ConfigError(f"{p}kind: expected auto, v4l2, libcamera, file, images or stream")
        if not self.libcamera_cmd or not all(self.libcamera_cmd):
            raise ConfigError(f"{p}libcamera_cmd: a command, e.g. [\"rpicam-vid\"]")
        if self.kind == "libcamera" and (self.width % 64 or self.height % 2):
            raise ConfigError(f"{p}width: the libcamera kind needs a width that is a multiple "
                              f"of 64 and an even height (e.g. 640x480, 1280x720)")
        if not self.source:
            raise ConfigError(f"{p}source: must not be empty")
        for name in ("images_fps", "fps", "idle_fps", "active_fps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{p}{name}: must be > 0")
        for name in ("reconnect_initial_s", "reconnect_max_s", "open_timeout_s",
                     "read_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{p}{name}: must be >= 0")
        if self.width <= 0 or self.height <= 0:
            raise ConfigError(f"{p}width: width and height must be > 0")


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """The lookup session: tracking, quality gate, liveness and decision (``[session]``).

    Lengths are relative to the inter-ocular distance (IOD, pixels between the eyes) so
    they hold at any distance from the camera.
    """

    # -- tracking
    #: a detection continues a track when its box overlaps the track's by this IoU; 0.3
    #: survives a head turn at 4 fps idle rate but not a jump to another person
    track_iou: float = 0.3
    #: ... or when its centre is within this fraction of the track's box size
    track_centre: float = 0.5
    #: a track not seen for this long is gone (the person left); 1 s bridges missed
    #: detections during a head turn
    lost_s: float = 1.0
    #: frames a face must be seen before a session starts: 2 ignores one-frame false
    #: detections and people walking past
    present_frames: int = 2
    # -- quality gate
    #: smallest face box side in pixels: below 60 px embeddings lose accuracy
    min_face_px: float = 60.0
    #: variance of the Laplacian of the face resized to 112 px grey: below ~40 the face is
    #: motion-blurred or out of focus (sharp webcam faces give 100-1000)
    min_sharpness: float = 40.0
    #: mean grey level of the face allowed: outside this the face is too dark/bright
    min_brightness: float = 40.0
    max_brightness: float = 230.0
    #: frontal pose: nose offset from the eye midline / IOD (about yaw; 0.18 ~ 15 degrees)
    max_yaw: float = 0.18
    #: nose height between eye line (0) and mouth line (1); frontal faces sit ~0.45-0.6
    min_pitch: float = 0.3
    max_pitch: float = 0.75
    #: eye line angle in degrees (roll); beyond 20 the aligner still copes but the person
    #: is not looking straight at the terminal
    max_roll_deg: float = 20.0
    #: consecutive good frames before the challenge: 3 proves the face is held still
    good_frames: int = 3
    #: good frontal frames embedded and averaged for the decision (more = steadier score).
    #: On LFW (bench/recognition_multi.py, docs/recognition.md) averaging P photos of a
    #: person, one enrolment photo, at the threshold giving FPIR 1e-2 per P: FNIR 0.43 at
    #: 1, 0.25 at 2, 0.20 at 3, 0.18 at 4. LFW photos are other days, not frames of one
    #: session, so a session gains less; 4 costs one frame (~0.1 s) and one embedding
    embed_frames: int = 4
    # -- liveness
    #: "challenge" asks for a random gesture; "off" skips liveness (only for tests or a
    #: staffed counter; a terminal in a hall must use "challenge")
    liveness: str = "challenge"
    #: challenges asked from: any of turn_left, turn_right, look_up, look_down
    challenges: tuple[str, ...] = ("turn_left", "turn_right", "look_up", "look_down")
    #: nose parallax (distance of the nose from where the homography of the eyes and
    #: mouth corners puts it) / IOD that counts as a 3-D head movement. Geometry gives
    #: ~0.5*sin(angle): 0.25 is a ~30-degree turn. It is this high because the CNN landmark
    #: model "sees" some parallax in flat prints tilted by 30-35 degrees (up to 0.25 for
    #: a 3-frame streak on our print-attack material, see docs/session.md); a real turn on
    #: hamilton_clip.mp4 reaches 0.3-0.39
    parallax_min: float = 0.25
    #: frames in a row (at active_fps) the commanded parallax must be held: 4 frames at
    #: 15 fps = 0.27 s. One-frame landmark glitches and the flicker of a tilted print do
    #: not last that long (3 frames let 1 of 4120 print attempts through, 4 none); a
    #: person asked to turn holds the turn far longer
    parallax_frames: int = 4
    #: parallax this large in another direction, while the commanded one is below
    #: parallax_min, fails the challenge (a replayed video of someone moving rarely moves
    #: the right way at the right time); above what tilted prints produce (0.25)
    wrong_way_max: float = 0.35
    #: second cue, independent of the landmark network: corners tracked on the face
    #: (optical flow) must *not* all move by one homography when the gesture is seen.
    #: 75th-percentile residual / IOD: a waved and tilted print stays below ~0.08 (worst
    #: seen 0.15 after long tracking drift), a real 30-degree turn gives 0.15-0.35.
    #: 0 disables it (unit tests of the landmark cue on synthetic landmarks)
    texture_min: float = 0.10
    #: the texture parallax of a real turn appears in the same frames as the landmark
    #: parallax; this grace only covers a frame or two of lag. Without the limit, optical
    #: flow drift on a waved print creeps over texture_min after a few seconds, while a
    #: landmark network that misreads the tilted print keeps its parallax up
    texture_grace_s: float = 0.5
    #: time allowed for the gesture after the prompt; a person needs 1-3 s
    challenge_s: float = 6.0
    #: the face after the gesture must still be the same person: cosine similarity of its
    #: embedding to the pre-challenge ones (same person turned ~20 degrees: > 0.5)
    same_person_min: float = 0.45
    #: while a match is on screen the face in front is re-embedded this often; when it is
    #: no longer the matched person (below same_person_min) the screen clears at once, so
    #: someone stepping into the place of the citizen never sees their dossiers. 1 s
    #: costs one embedding per second and is shorter than it takes to read a dossier
    watch_s: float = 1.0
    # -- decision
    #: match threshold; 0 takes the model pack's own threshold
    threshold: float = 0.0
    #: the best citizen must beat the next citizen by this much (cosine); 0.08 keeps
    #: look-alike siblings from being shown each other's dossiers
    margin: float = 0.08
    #: gallery neighbours asked for (>= 2 to see the next citizen)
    top_k: int = 5
    #: lower bound of the confirmation step: a face below the match threshold (or too
    #: close to a second citizen) but with citizens scoring >= this is asked for the date
    #: of birth of one of them. 0 (or >= the match threshold) turns the step off: that is
    #: the default until the district publishes a calibrated value
    confirm_threshold: float = 0.0
    #: best distinct citizens the answer is checked against. 3 lets an enrolled citizen
    #: ranked behind one or two look-alikes still confirm, while a stranger's wrong answer
    #: counts on every candidate and a right guess wins only one of three dates
    confirm_candidates: int = 3
    #: wrong dates of birth per session before it ends "not recognised"; 3 like the PIN
    #: (the per-citizen budget across sessions is api.pin_max_failures, shared with PINs)
    confirm_tries: int = 3
    #: time allowed to type the date (8 digits; elderly citizens need 20-30 s)
    confirm_timeout_s: float = 60.0
    # -- timing
    #: a session that reaches no decision in this long ends "timed out"
    timeout_s: float = 20.0
    #: how long a match stays on screen (ends earlier when the person leaves)
    result_s: float = 20.0
    #: how long "not recognised" / "liveness failed" / "timed out" stay on screen
    message_s: float = 5.0
    #: the same face may start a new session this long after a failed one (retry)
    retry_after_s: float = 5.0
    #: a rating is accepted this long after the match was shown
    rating_window_s: float = 60.0

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.liveness not in ("challenge", "off"):
            raise ConfigError(f"{p}liveness: expected challenge or off")
        allowed = {"turn_left", "turn_right", "look_up", "look_down"}
        if not self.challenges or set(self.challenges) - allowed:
            raise ConfigError(f"{p}challenges: expected a non-empty list of {sorted(allowed)}")
        if self.top_k < 2:
            raise ConfigError(f"{p}top_k: must be >= 2 to compare with the next citizen")
        for name in ("present_frames", "good_frames", "embed_frames", "parallax_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{p}{name}: must be >= 1")
        for name in ("lost_s", "challenge_s", "timeout_s", "result_s", "message_s", "watch_s",
                     "min_face_px", "parallax_min", "wrong_way_max"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{p}{name}: must be > 0")
        if self.wrong_way_max < self.parallax_min:
            raise ConfigError(f"{p}wrong_way_max: must be >= parallax_min")
        if not 0 <= self.threshold < 1 or not 0 <= self.margin < 1:
            raise ConfigError(f"{p}threshold: threshold and margin must be in [0, 1)")
        if not 0 <= self.confirm_threshold < 1:
            raise ConfigError(f"{p}confirm_threshold: must be in [0, 1) (0 = off)")
        if not 1 <= self.confirm_candidates <= 10:
            raise ConfigError(f"{p}confirm_candidates: must be between 1 and 10")
        if not 1 <= self.confirm_tries <= 10:
            raise ConfigError(f"{p}confirm_tries: must be between 1 and 10")
        if not 5 <= self.confirm_timeout_s <= 600:
            raise ConfigError(f"{p}confirm_timeout_s: must be between 5 and 600 seconds")


@dataclasses.dataclass(frozen=True)
class TerminalConfig:
    """Identity of this terminal and where it keeps its state."""

    id: str = "terminal-dev"
    district: str = "district-dev"
    state_dir: Path = Path("/var/lib/motcua")
    #: audit.jsonl is rotated at this size; a line is ~200 B, so 4 MB is ~20,000
    #: sessions, a few months of a busy hall
    audit_max_mb: float = 4.0
    #: rotated audit files kept (audit.1.jsonl ..); older ones are deleted, which bounds
    #: how long a matched citizen's pseudonymous id stays on the terminal
    audit_files: int = 3

    def validate(self, prefix: str = "terminal") -> None:
        if not 0.01 <= self.audit_max_mb <= 1024:
            raise ConfigError(f"{prefix}.audit_max_mb: must be between 0.01 and 1024")
        if not 0 <= self.audit_files <= 100:
            raise ConfigError(f"{prefix}.audit_files: must be between 0 and 100")


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    """The gRPC display API the terminal serves (proto/display.proto)."""

    #: host:port; loopback by default. A non-loopback address requires TLS with client
    #: certificates (tls_cert, tls_key, tls_client_ca). Port 0 picks a free port.
    listen: str = "127.0.0.1:50051"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA that signs the display/technician client certificates
    tls_client_ca: Path | None = None
    #: one-shot LookupImage for counter staff; off unless the office asks for it
    lookup_image: bool = False
    #: wrong PINs allowed per matched session before it locks; 3 like a bank card
    pin_tries: int = 3
    #: wrong PINs in a row allowed per *citizen*, across sessions and restarts (kept in
    #: <state_dir>/attempts.sqlite), before the citizen's PIN locks for pin_lockout_s.
    #: Each further lock without a right PIN in between is twice as long, up to
    #: pin_lockout_max_s. 5 leaves a citizen who mistypes room for one more session;
    #: with 15 min doubling to 24 h a guesser gets ~40 tries the first day, then 5 a day
    #: (a 4-digit PIN: 1 chance in 2,000 a day)
    pin_max_failures: int = 5
    pin_lockout_s: float = 900.0
    pin_lockout_max_s: float = 86400.0
    #: screens watching at once; a hall has 1-2, 16 leaves room for technicians' tools
    max_watchers: int = 16
    #: ... of which one caller may hold this many (the caller: its client certificate's
    #: common name under TLS, else its IP address, so every local process counts as one):
    #: 4 is a technician's tools; a process hogging slots gets no more
    max_watchers_per_peer: int = 4
    #: slots kept for the kiosk display itself, outside max_watchers. The display proves
    #: it is the display with the token in <state_dir>/display.token (made by the
    #: terminal, readable only by its user) or, under TLS, a client certificate whose
    #: common name is in display_clients. When they are all taken, the display's oldest
    #: stream is dropped for its new one (a restarted display supersedes its stale stream)
    display_watchers: int = 2
    display_clients: tuple[str, ...] = ()
    #: largest LookupImage upload; 4 MiB holds any phone JPEG resized for counter use
    max_image_bytes: int = 4 * 1024 * 1024
    #: LookupImage calls per peer (client certificate, or IP address without TLS): a
    #: sustained rate per minute and a burst. A counter clerk looks up one citizen every
    #: minute or so; 6/min with a burst of 3 lets a clerk retry a bad photo at once, while
    #: a script trying photos against the gallery gets 8,640 a day, not millions
    lookup_per_minute: float = 6.0
    lookup_burst: int = 3
    #: largest LookupImage picture, in pixels, read from the image header before anything
    #: is decoded: 12.5 MP holds a 4032x3024 phone photo; decoding it costs ~75 MB. (The
    #: shared image reader caps every path at faces.imagefiles.MAX_PIXELS anyway)
    max_image_pixels: int = 12_500_000
    #: counter the screen sends citizens to when they are not recognised
    help_counter: str = "1"
    #: seconds a shutdown waits for running calls before cancelling them
    grace_s: float = 2.0

    def validate(self, prefix: str) -> None:
        host, _port = split_hostport(self.listen, f"{prefix}.listen")
        tls = (self.tls_cert, self.tls_key, self.tls_client_ca)
        if any(t is not None for t in tls) and not all(t is not None for t in tls):
            raise ConfigError(
                f"{prefix}.tls_cert: TLS needs all of tls_cert, tls_key and tls_client_ca"
            )
        if not is_loopback_host(host) and self.tls_cert is None:
            raise ConfigError(
                f"{prefix}.listen: {self.listen} is not loopback; set tls_cert, tls_key and "
                "tls_client_ca (client certificates are required off this machine)"
            )
        if not 1 <= self.pin_tries <= 10:
            raise ConfigError(f"{prefix}.pin_tries: expected 1..10, got {self.pin_tries}")
        if not 1 <= self.pin_max_failures <= 100:
            raise ConfigError(
                f"{prefix}.pin_max_failures: expected 1..100, got {self.pin_max_failures}")
        if not 1 <= self.pin_lockout_s <= self.pin_lockout_max_s:
            raise ConfigError(f"{prefix}.pin_lockout_s: expected 1 s .. pin_lockout_max_s, got "
                              f"{self.pin_lockout_s}")
        if self.pin_lockout_max_s > 365 * 86400:
            raise ConfigError(f"{prefix}.pin_lockout_max_s: at most a year, got "
                              f"{self.pin_lockout_max_s}")
        if not 1 <= self.max_watchers <= 256:
            raise ConfigError(f"{prefix}.max_watchers: expected 1..256, got {self.max_watchers}")
        if not 1 <= self.max_watchers_per_peer <= self.max_watchers:
            raise ConfigError(f"{prefix}.max_watchers_per_peer: expected 1..max_watchers, got "
                              f"{self.max_watchers_per_peer}")
        if not 1 <= self.display_watchers <= 16:
            raise ConfigError(f"{prefix}.display_watchers: expected 1..16, got "
                              f"{self.display_watchers}")
        if self.max_image_bytes < 1024:
            raise ConfigError(f"{prefix}.max_image_bytes: too small ({self.max_image_bytes})")
        if not 10_000 <= self.max_image_pixels <= 24_000_000:
            raise ConfigError(f"{prefix}.max_image_pixels: expected 10000..24000000 (the shared "
                              f"image reader's cap), got {self.max_image_pixels}")
        if not 0 < self.lookup_per_minute <= 600:
            raise ConfigError(f"{prefix}.lookup_per_minute: expected 0 < rate <= 600, got "
                              f"{self.lookup_per_minute}")
        if not 1 <= self.lookup_burst <= 100:
            raise ConfigError(f"{prefix}.lookup_burst: expected 1..100, got {self.lookup_burst}")


@dataclasses.dataclass(frozen=True)
class DisplayConfig:
    """The kiosk display client (``motcua display``): where the API is, where the page is."""

    #: the terminal's display API (host:port)
    api: str = "127.0.0.1:50051"
    #: the local web page for the kiosk browser; loopback: the browser runs on the same box
    http_listen: str = "127.0.0.1:8080"
    #: "vi" (default) or "en"
    language: str = "vi"
    #: client certificate and the CA of the terminal's certificate, when the API uses TLS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    #: longest wait between reconnection tries; 5 s brings the screen back soon after a
    #: terminal restart without hammering a dead one
    reconnect_max_s: float = 5.0
    #: the token the terminal writes to prove this is the kiosk display (its reserved
    #: watcher slots, api.display_watchers): <terminal.state_dir>/display.token. Read at
    #: each connection; missing: the display connects as an ordinary watcher
    api_token_file: Path | None = Path("/var/lib/motcua/display.token")

    def validate(self, prefix: str) -> None:
        split_hostport(self.api, f"{prefix}.api")
        host, _port = split_hostport(self.http_listen, f"{prefix}.http_listen")
        if not is_loopback_host(host):
            raise ConfigError(
                f"{prefix}.http_listen: {self.http_listen} is not loopback; the kiosk page "
                "has no TLS and no authentication (the kiosk browser runs on the same box), "
                "so it may only listen on 127.0.0.1, ::1 or localhost"
            )
        if self.language not in ("vi", "en"):
            raise ConfigError(f"{prefix}.language: expected 'vi' or 'en', got {self.language!r}")
        tls = (self.tls_cert, self.tls_key, self.tls_ca)
        if any(t is not None for t in tls) and not all(t is not None for t in tls):
            raise ConfigError(f"{prefix}.tls_cert: TLS needs all of tls_cert, tls_key and tls_ca")
        if self.reconnect_max_s <= 0:
            raise ConfigError(f"{prefix}.reconnect_max_s: must be positive")


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """Gallery store ([store]): HNSW index parameters and checkpoint policy.

    The values come from ``bench/store.py`` runs on a 2-core x86 machine with 512-d
    clustered embeddings; docs/store.md has the figures behind each choice.
    """

    #: HNSW links per node. On 512-d face-like data with one embedding per citizen (high
    #: intrinsic dimension: strangers are nearly orthogonal) M=16 needs ef=256 for
    #: recall@1 0.992 at 100k; M=32 reaches 0.998 at ef=64 for +128 B per vector
    M: int = 32
    #: build-time beam, a trade of search speed against add speed (bench/store.py at
    #: 100k, docs/store.md): 125 reaches recall@1 0.995 at ef=32 (search 0.24 ms, 26x a
    #: one-thread brute force) and applies ~2,500 upserts/s; 100 needs ef=52 (0.31 ms,
    #: 20x) for ~2,650/s; 150 gains little more search speed and drops to ~2,000/s
    ef_construction: int = 125
    #: search-time beam. bench/store.py finds 32 enough for citizen-level recall@1 >= 0.995
    #: on its synthetic faces at 100k; 64 keeps a margin for real embeddings, which may
    #: be harder, for ~0.05 ms more per search (nothing next to the ~17 ms of a face)
    ef: int = 64
    #: refill deleted slots on add (hnswlib replace_deleted). Off: in hnswlib 0.8 a
    #: replacing add re-links neighbours of neighbours and measured 8-16x slower than a
    #: fresh add, stalling searches for a whole batch; deleted slots are reclaimed by the
    #: rebuild below instead. On: memory stays at the live size, adds are slower
    reuse_deleted_slots: bool = False
    #: rebuild the index when this share of its slots is deleted-but-not-reused: past it
    #: the graph has holes that cost recall, and the slots cost memory
    rebuild_deleted_share: float = 0.25
    #: do not bother rebuilding tiny indexes (a rebuild of 1,000 vectors is ~0.5 s anyway,
    #: but the share swings wildly there)
    rebuild_min_slots: int = 1000
    #: capacity growth when the index is full; 1.5 amortises resize_index (a full copy)
    #: while wasting at most a third of the reserved memory
    growth_factor: float = 1.5
    #: capacity reserved at creation (slots); resized by growth_factor past it
    initial_capacity: int = 1024
    #: write a checkpoint after this many applied changes (and on close, after a snapshot
    #: or rebuild), or after checkpoint_share of the gallery if that is more. A 100k
    #: checkpoint is ~240 MB and took 2.4 s to write (bench/store.py): every 2,000
    #: changes that doubled the cost of a burst of upserts; replaying 2,000-5,000 changes
    #: on start costs 1-3 s, small next to a rebuild (~110 s at 100k)
    checkpoint_every: int = 2000
    #: see checkpoint_every: 5% of the gallery = 5,000 changes at 100k citizens
    checkpoint_share: float = 0.05
    #: a due checkpoint waits until no batch has come for this many seconds, so a burst
    #: (a terminal catching up, a mass enrolment) is not slowed by a ~240 MB write every
    #: 5% of the gallery: ~20% of a burst's time at 100k (docs/store.md). 1 s is a few
    #: batch gaps of a live sync; 0 = write it at once, as soon as it is due
    checkpoint_quiet_s: float = 1.0
    #: ...but never more than this many times the due number of changes without one: it
    #: bounds what a crash in a long burst replays at open (1.5 x 5,000 changes at 100k,
    #: ~2 s of adds here on top of the checkpoint load)
    checkpoint_max_defer: float = 1.5
    #: checkpoints kept; the older one is a fallback when the newest is damaged. Older
    #: checkpoints are dropped anyway once a citizen deletion happened after them, so a
    #: deleted citizen's vectors do not survive in a fallback file
    keep_checkpoints: int = 2
    #: bound, in seconds, for "deleted": after a citizen is deleted (or left out of a
    #: snapshot) its vectors are gone from every file of the store within this time
    #: while the store runs, and within this time of the next open after a crash. SQLite
    #: is cleaned at once (secure_delete + WAL truncated after the commit); the index
    #: checkpoint that drops the older files is started at the latest half of this after
    #: the delete, leaving the other half for writing it (0.9 s at 100k, docs/store.md).
    #: 10 s lets a burst of deletions share one ~240 MB checkpoint
    deletion_scrub_s: float = 10.0
    #: threads for bulk index builds (rebuild, snapshot); 2 = the cores of a Pi-class box
    #: we may use while searches run on the old index
    build_threads: int = 2
    #: most embeddings one citizen may have (several visits). Searches fetch k x this many
    #: neighbours to be sure of k distinct citizens, so it bounds search cost
    max_embeddings_per_citizen: int = 16

    def validate(self, prefix: str = "store") -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}: {why}" if prefix else f"{key}: {why}")

        for key in ("M", "ef_construction", "ef", "initial_capacity", "checkpoint_every",
                    "keep_checkpoints", "build_threads", "max_embeddings_per_citizen",
                    "rebuild_min_slots"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        if not 2 <= self.M <= 100:
            raise bad("M", "must be between 2 and 100")
        if not 0.0 <= self.checkpoint_share <= 1.0:
            raise bad("checkpoint_share", "must be between 0 and 1")
        if not 0.0 <= self.checkpoint_quiet_s <= 3600.0:
            raise bad("checkpoint_quiet_s", "must be between 0 and 3600 seconds")
        if not 0.1 <= self.deletion_scrub_s <= 3600.0:
            raise bad("deletion_scrub_s", "must be between 0.1 and 3600 seconds")
        if not 1.0 <= self.checkpoint_max_defer <= 10.0:
            raise bad("checkpoint_max_defer", "must be between 1 and 10")
        if not 0.0 < self.rebuild_deleted_share < 1.0:
            raise bad("rebuild_deleted_share", "must be between 0 and 1 (exclusive)")
        if not 1.05 <= self.growth_factor <= 4.0:
            raise bad("growth_factor", "must be between 1.05 and 4")


@dataclasses.dataclass(frozen=True)
class OpsConfig:
    """Operations: the Prometheus exporter and the log format (``[ops]``)."""

    #: host:port of the metrics exporter; loopback (the district scrapes through its own
    #: agent or an SSH tunnel); "" switches it off. 9464 is free on a terminal.
    metrics_listen: str = "127.0.0.1:9464"
    #: "json" (one object per line, for the journal), "text", or "auto" (json under systemd)
    log_format: str = "auto"
    #: debug, info, warning or error
    log_level: str = "info"

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.metrics_listen:  # "" = off
            split_hostport(self.metrics_listen, f"{p}metrics_listen")
        if self.log_format not in ("auto", "json", "text"):
            raise ConfigError(f"{p}log_format: expected auto, json or text")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"{p}log_level: expected debug, info, warning or error")


@dataclasses.dataclass(frozen=True)
class SyncConfig(BrokerConfig):
    """How the terminal reaches its district's MQTT broker (``[sync]``): the broker
    settings both applications share (:class:`sync.mqtt.BrokerConfig`) plus the district's
    public key and the topic prefix. An empty ``broker`` runs the terminal on its local
    store only.
    """

    #: the district's Ed25519 public key (PEM) the technician installed
    district_key_file: Path = Path("/etc/motcua/district.pub")
    #: topic prefix shared with the district publisher (sync.topics.DEFAULT_PREFIX)
    prefix: str = "motcua/v1"


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole terminal configuration tree."""

    terminal: TerminalConfig = TerminalConfig()
    models: ModelsConfig = ModelsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    detector: DetectorConfig = DetectorConfig()
    api: ApiConfig = ApiConfig()
    display: DisplayConfig = DisplayConfig()
    camera: CameraConfig = CameraConfig()
    session: SessionConfig = SessionConfig()
    store: StoreSettings = StoreSettings()
    ops: OpsConfig = OpsConfig()
    sync: SyncConfig = SyncConfig()


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    return build_section(Config, data)


def load_config(path: Path | None) -> Config:
    """Load and validate the TOML file at ``path`` (defaults only when ``path`` is None)."""
    if path is None:
        return Config()
    return config_from_dict(read_toml(path))


