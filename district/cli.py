"""``motcua district ...``: the district server's commands (keys, enrolment, log, publisher).

motcua district keygen --out DIR            Ed25519 key pair (private 0600, public PEM)
motcua district init --db LOG --district ID [--pack NAME | --embedder-id X --dim N]
motcua district enrol --db LOG --records FILE --photos DIR [--pins-out CSV]
motcua district update --db LOG CODE [--status S] [--stage T] [--appointment DATE]
motcua district delete --db LOG CITIZEN_ID
motcua district suspend-face --db LOG CITIZEN_ID --reason TEXT
motcua district info --db LOG
motcua district calibration --db LOG [--recompute]
motcua district publish --db LOG --key KEY --broker HOST:PORT [TLS/auth options]
motcua district fleet --district ID --broker HOST:PORT [TLS/auth options]
motcua [--config district.toml] district serve      the district service (docs/district.md)
motcua [--config district.toml] district import FILE [--db LOG]   bulk case-system events
motcua district openapi                             the ingest API's OpenAPI schema (JSON)
motcua [--config district.toml] district console-user add NAME [--users-file F]  (password on stdin)
motcua [--config district.toml] district console-cert --host NAME [--cert F --key F]
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from core.errors import AuthenticationError, ConfigError, DistrictError
from core.tomlconfig import build_section, read_toml
from district import calibration as calib
from district.config import ConsoleSection, load_district_config
from district.console.auth import add_user, check_user_name
from district.console.tlscert import make_self_signed
from district.enrol import enrol, pipeline_embedder, read_records, write_pins
from district.fleet import collect, format_table
from district.importer import run_import
from district.log import DistrictLog
from district.pki import sign_terminal_csr
from district.publisher import BATCH_MAX_CHANGES, REPLAY_WINDOW, Publisher
from district.service import DistrictService, openapi_json, schema_app, setup_json_logging
from district.survey import survey_answers
from district.untrusted import shown
from faces.pipeline import load_pipeline
from models.pack import load_manifest
from sync.changes import DossierStatus
from sync.keys import generate_keypair, load_private_key
from sync.mqtt import BrokerConfig, BrokerSettings
from sync.mqtt import broker_settings as settings_from_config
from sync.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("district", help="district server: keys, enrolment, publish, fleet")
    sub = p.add_subparsers(dest="district_command", metavar="ACTION", required=True)

    k = sub.add_parser("keygen", help="create the district's Ed25519 signing key pair")
    k.add_argument("--out", type=Path, required=True, help="folder for district.key/.pub")
    k.add_argument("--force", action="store_true", help="overwrite an existing key")
    k.set_defaults(func=cmd_keygen)

    i = sub.add_parser("init", help="create an empty change log for a district")
    _db(i)
    i.add_argument("--district", required=True, help="district id (a topic level)")
    i.add_argument("--pack", help="model pack whose embedder the log uses (default: config)")
    i.add_argument("--embedder-id", help="embedder id, instead of --pack")
    i.add_argument("--dim", type=int, help="embedding dimension, with --embedder-id")
    i.set_defaults(func=cmd_init)

    e = sub.add_parser("enrol", help="enrol citizens from records + photos")
    _db(e)
    e.add_argument("--records", type=Path, required=True, help="CSV or JSON records")
    e.add_argument("--photos", type=Path, required=True, help="folder of photos")
    e.add_argument("--pins-out", type=Path, help="CSV for issued PINs (default: beside --db)")
    e.set_defaults(func=cmd_enrol)

    u = sub.add_parser("update", help="change a dossier's status, stage or appointment")
    _db(u)
    u.add_argument("code", help="dossier code")
    u.add_argument("--status", choices=[s.value for s in DossierStatus])
    u.add_argument("--stage")
    u.add_argument("--appointment", help="YYYY-MM-DD, or '' to clear")
    u.add_argument("--counter")
    u.set_defaults(func=cmd_update)

    d = sub.add_parser("delete", help="forget a citizen everywhere (right to be forgotten)")
    _db(d)
    d.add_argument("citizen_id")
    d.set_defaults(func=cmd_delete)

    sf = sub.add_parser("suspend-face", help="make a citizen's face unmatchable on every "
                        "terminal until re-enrolment (dossiers stay); prints the change")
    _db(sf)
    sf.add_argument("citizen_id")
    sf.add_argument("--reason", required=True,
                    help="why (kept in the district log, never sent to terminals)")
    sf.set_defaults(func=cmd_suspend_face)

    n = sub.add_parser("info", help="show the log's district, epoch, head and counts")
    _db(n)
    n.set_defaults(func=cmd_info)

    cal = sub.add_parser("calibration", help="the operating point derived from the gallery "
                         "(published signed in the manifest): show, or --recompute")
    _db(cal)
    cal.add_argument("--recompute", action="store_true",
                     help="derive it again now (else only when the gallery moved past "
                     "[calibration] recompute_share, or never derived)")
    cal.add_argument("--show", action="store_true", help="only show; never derive")
    cal.set_defaults(func=cmd_calibration)

    c = sub.add_parser("compact", help="remove old published changes from the log "
                       "(terminals further behind get a snapshot)")
    _db(c)
    c.add_argument("--keep", type=int, default=None,
                   help="newest published changes to keep (default: the publisher's "
                   "replay window, 20000)")
    c.set_defaults(func=cmd_compact)

    ne = sub.add_parser("new-epoch", help="make every terminal reinstall the gallery "
                        "from a snapshot (after restoring this log from a backup)")
    _db(ne)
    ne.add_argument("--yes", action="store_true", required=True,
                    help="confirm: each terminal downloads the whole gallery again")
    ne.set_defaults(func=cmd_new_epoch)

    sc = sub.add_parser("sign-csr", help="check a terminal's certificate request and sign "
                        "it with the terminals' CA (TLS client certificate)")
    sc.add_argument("csr", type=Path, help="the request (motcua-device csr)")
    sc.add_argument("--district", required=True, help="this district's id (the request's O)")
    sc.add_argument("--ca-cert", type=Path, required=True, help="terminals' CA certificate")
    sc.add_argument("--ca-key", type=Path, required=True, help="its key (PEM, unencrypted)")
    sc.add_argument("--days", type=int, default=365, help="validity (default 365, at most 825)")
    sc.add_argument("--out", type=Path, required=True, help="certificate file to write (new)")
    sc.set_defaults(func=cmd_sign_csr)

    r = sub.add_parser("reports", help="terminals' \"not me\" reports and ratings, newest first")
    _db(r)
    r.add_argument("--limit", type=int, default=50, help="rows to show at most")
    r.set_defaults(func=cmd_reports)

    sa = sub.add_parser("survey-answers", help="citizens' survey answers from the QR "
                        "(docs/district.md), newest first")
    _db(sa)
    sa.add_argument("--limit", type=int, default=50, help="rows to show at most")
    sa.set_defaults(func=cmd_survey_answers)

    pub = sub.add_parser("publish", help="publish the log to the broker (runs until stopped)")
    _db(pub)
    pub.add_argument("--key", type=Path, required=True, help="district private key (PEM)")
    pub.add_argument(
        "--replay-window",
        type=int,
        default=None,
        help="changes a replay may cover; older gaps get a snapshot",
    )
    pub.add_argument(
        "--batch-max-changes",
        type=int,
        default=None,
        help="most changes in one batch message (default 500)",
    )
    _broker_args(pub)
    pub.set_defaults(func=cmd_publish)

    sv = sub.add_parser("serve", help="run the district service: publisher, terminal "
                        "requests and reports, the case system's ingest API (docs/district.md)")
    _config_arg(sv)
    sv.add_argument("--listen", help="HOST:PORT of the HTTP API (default: [ingest] listen)")
    sv.set_defaults(func=cmd_serve)

    im = sub.add_parser("import", help="apply a CSV/JSON file of case-system events "
                        "(resumable: events already applied are skipped)")
    _config_arg(im)
    im.add_argument("file", type=Path, help=".json (a list), .jsonl or .csv of events")
    im.add_argument("--db", type=Path, help="the change log (default: [district] db)")
    im.add_argument("--quiet", action="store_true", help="no progress bar")
    im.set_defaults(func=cmd_import)

    oa = sub.add_parser("openapi", help="print the ingest API's OpenAPI schema")
    oa.set_defaults(func=cmd_openapi)

    cu = sub.add_parser("console-user", help="the operator console's logins")
    cu_sub = cu.add_subparsers(dest="console_user_command", metavar="ACTION", required=True)
    cua = cu_sub.add_parser("add", help="add or reset a user (password from the prompt, "
                            "or one line on stdin)")
    _config_arg(cua)
    cua.add_argument("name", help="user name: letters, digits, '_', '.', '-'")
    cua.add_argument("--users-file", type=Path, help="default: [console] users_file")
    cua.set_defaults(func=cmd_console_user_add)

    cc = sub.add_parser("console-cert", help="make a self-signed TLS certificate for a "
                        "test console (a real install uses the office CA's)")
    _config_arg(cc)
    cc.add_argument("--host", action="append", required=True,
                    help="a name or address the console is reached at (repeatable)")
    cc.add_argument("--cert", type=Path, help="default: [console] tls_cert_file")
    cc.add_argument("--key", type=Path, help="default: [console] tls_key_file")
    cc.set_defaults(func=cmd_console_cert)

    f = sub.add_parser("fleet", help="table of the district's terminals (retained state)")
    f.add_argument("--district", required=True)
    f.add_argument("--timeout", type=float, default=3.0, help="seconds to collect at most")
    _broker_args(f)
    f.set_defaults(func=cmd_fleet)


def _config_arg(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given here or before the subcommand (motcua --config X district serve)
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="TOML",
                   help="the district's configuration file (district.toml)")


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, required=True, help="the district change log (SQLite)")


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="HOST:PORT of the MQTT broker")
    p.add_argument("--fallback-broker", action="append", default=[], metavar="HOST:PORT",
                   help="a further node of the broker cluster, tried when the one before is "
                        "down (repeatable; docs/scale.md)")
    p.add_argument("--ca-file", type=Path, help="CA of the broker (enables TLS)")
    p.add_argument("--cert-file", type=Path, help="client certificate (PEM)")
    p.add_argument("--key-file", type=Path, help="client certificate key (PEM)")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--password-env", help="environment variable holding the password")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix")
    p.add_argument("--client-id", help="MQTT client id (default motcua-district-<id>)")


def broker_settings(args: argparse.Namespace) -> BrokerSettings:
    """The broker options of a district command, through the same mapping as the files."""
    cfg = BrokerConfig(broker=args.broker, tls=args.ca_file is not None, ca_file=args.ca_file,
                       cert_file=args.cert_file, key_file=args.key_file,
                       username=args.username, password_file=args.password_file,
                       password_env=args.password_env,
                       fallback_brokers=tuple(getattr(args, "fallback_broker", None) or ()))
    try:
        cfg.validate("options")
        return settings_from_config(cfg, key="options")
    except ConfigError as exc:  # name the option: "--cert-file: cert_file and key_file ..."
        name, _, rest = str(exc).removeprefix("options.").partition(":")
        rest = rest.replace("host:port", "HOST:PORT")
        # "fallback_brokers[1]" is the second --fallback-broker
        name = name.replace("fallback_brokers", "fallback_broker")
        raise ConfigError(f"--{name.replace('_', '-')}:{rest}") from None


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]

    return DistrictLog.open(args.db)


def cmd_keygen(args: argparse.Namespace) -> int:

    priv, pub = args.out / "district.key", args.out / "district.pub"
    generate_keypair(priv, pub, overwrite=args.force)
    print(f"private key: {priv} (mode 600, keep it on the district server)")
    print(f"public key:  {pub} (install on every terminal as sync.district_key_file)")
    return 0


def cmd_init(args: argparse.Namespace) -> int:

    if args.embedder_id or args.dim:
        if not (args.embedder_id and args.dim):
            raise ConfigError("--embedder-id and --dim go together")
        embedder_id, dim = args.embedder_id, args.dim
    else:

        name = args.pack or load_district_config(_config_path(args)).models.pack
        m = load_manifest(name)
        embedder_id, dim = str(m.embedder["id"]), int(m.embedder["dim"])
    dlog = DistrictLog.create(args.db, district_id=args.district, embedder_id=embedder_id, dim=dim)
    print(f"district {dlog.district_id}: log {args.db}, embedder {embedder_id} ({dim}-d)")
    dlog.close()
    return 0


def _config_path(args: argparse.Namespace) -> Path | None:
    cfg = getattr(args, "config", None)
    return Path(cfg) if cfg else None


def cmd_enrol(args: argparse.Namespace) -> int:

    dlog = _open(args)
    records = read_records(args.records)
    if not args.photos.is_dir():
        raise DistrictError(f"--photos {args.photos}: not a folder")
    cfg = load_district_config(_config_path(args))
    embedder = pipeline_embedder(load_pipeline(cfg))

    def progress(done: int, total: int) -> None:
        print(f"\rembedding photos: {done}/{total}", end="", file=sys.stderr, flush=True)

    result = enrol(dlog, records, args.photos, embedder, progress=progress,
                   confirm_secret=cfg.calibration.confirm_secret)
    print(file=sys.stderr)
    for line in result.skipped_photos:
        print(f"skipped {line}", file=sys.stderr)
    if result.issued_pins:
        pins = args.pins_out or args.db.with_name(args.db.stem + "-issued-pins.csv")
        write_pins(pins, result.issued_pins)
        print(f"issued {len(result.issued_pins)} PINs -> {pins} (mode 600; hand out, then delete)")
    print(
        f"enrolled {result.citizens} citizens, {result.dossiers} dossiers, "
        f"{result.photos} photos as changes {result.first_seq}..{result.last_seq}"
    )
    dlog.close()
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    dlog = _open(args)
    if (
        args.status is None
        and args.stage is None
        and args.appointment is None
        and args.counter is None
    ):
        raise DistrictError("nothing to change: give --status, --stage, --appointment or --counter")
    seq = dlog.update_dossier(
        args.code,
        status=DossierStatus(args.status) if args.status else None,
        stage=args.stage,
        appointment_on=args.appointment,
        counter=args.counter,
    )
    print(f"dossier {args.code} updated as change {seq}")
    dlog.close()
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    dlog = _open(args)
    seq = dlog.delete_citizen(args.citizen_id)
    print(f"citizen {args.citizen_id} deleted as change {seq} (earlier entries erased)")
    dlog.close()
    return 0


def cmd_suspend_face(args: argparse.Namespace) -> int:
    dlog = _open(args)
    try:
        already = dlog.face_suspended(args.citizen_id)
        seq = dlog.suspend_face(args.citizen_id, reason=args.reason)
    finally:
        dlog.close()
    if already:
        print(f"citizen {args.citizen_id}: face already suspended by change {seq}")
    else:
        print(f"citizen {args.citizen_id}: face suspended until re-enrolment as change {seq}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    dlog = _open(args)
    info = dlog.info()
    print(
        f"district {info.district_id}  epoch {info.epoch}  embedder {info.embedder_id} "
        f"({info.dim}-d)\nhead {info.head_seq}  published {info.published_seq}  "
        f"citizens {info.citizen_count}  dossiers {info.dossier_count}"
        + (f"\ncompacted up to change {info.compacted_to}" if info.compacted_to else "")
    )
    lease = dlog.lease()  # docs/scale.md: which worker publishes
    if lease is not None:
        print(f"publisher lease: {lease.holder or 'free'}, generation {lease.generation}, "
              f"renewed {max(0.0, time.time() - lease.renewed_at):.0f} s ago")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:

    keep = REPLAY_WINDOW if args.keep is None else args.keep
    if keep < 1:
        raise ConfigError("--keep: must be at least 1")
    dlog = _open(args)
    removed = dlog.compact(keep)
    print(f"{removed} change(s) removed; replays now start at change {dlog.replay_from_seq} "
          f"(head {dlog.head_seq}, published {dlog.published_seq})")
    dlog.close()
    return 0


def cmd_new_epoch(args: argparse.Namespace) -> int:
    dlog = _open(args)
    epoch = dlog.new_epoch()
    print(f"district {dlog.district_id} is now at epoch {epoch}: every terminal installs a "
          "snapshot when it next sees the manifest")
    dlog.close()
    return 0


def cmd_sign_csr(args: argparse.Namespace) -> int:

    if args.out.exists():
        raise ConfigError(f"--out: {args.out} exists; refusing to overwrite a certificate")

    def read(path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None

    issued = sign_terminal_csr(read(args.csr, "csr"), read(args.ca_cert, "--ca-cert"),
                               read(args.ca_key, "--ca-key"), district_id=args.district,
                               days=args.days)
    try:
        with open(args.out, "xb") as fh:
            fh.write(issued.pem)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"certificate for terminal {issued.terminal_id} of district {args.district} "
          f"written to {args.out}\nserial {issued.serial:x}  valid until "
          f"{issued.not_after:%Y-%m-%d %H:%M} UTC  sha256 {issued.sha256}\n"
          f"install it on the device: sudo motcua-device install-cert {args.out.name}")
    return 0


def cmd_reports(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError("--limit: must be at least 1")

    rows = _open(args).reports(args.limit)
    print(f"{'time':<30} {'terminal':<16} {'kind':<7} {'session':<34} {'citizen':<12} rating")
    for terminal, session, kind, when, citizen, rating, _score in rows:
        # every field came from a terminal: shown() makes it inert and bounded
        stars = str(rating) if kind == "rating" else "-"
        print(f"{shown(when, 40):<30} {shown(terminal, 64):<16} {shown(kind, 8):<7} "
              f"{shown(session, 128):<34} {shown(citizen, 64) or '-':<12} {stars}")
    print(f"{len(rows)} report(s)")
    return 0


def cmd_survey_answers(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError("--limit: must be at least 1")
    _open(args).close()  # a clear error when it is not a change log
    rows = survey_answers(args.db, args.limit)
    print(f"{'time':<30} {'terminal':<16} {'session':<34} {'citizen':<12} rating  comment")
    for a in rows:
        # the comment came from a phone, the ids from a terminal: shown() makes them inert
        print(f"{shown(a.time, 40):<30} {shown(a.terminal_id, 64):<16} "
              f"{shown(a.session_id, 128):<34} {shown(a.citizen_id, 64) or '-':<12} "
              f"{a.rating:<7} {shown(a.comment, 500)}")
    print(f"{len(rows)} answer(s)")
    return 0


def pack_threshold(pack: str, dlog: DistrictLog | None = None) -> float:
    """The model pack's own match threshold (used below the calibration's gallery floor).
    With ``dlog``: a warning when the log holds another embedder's vectors (a district
    enrolled with FaceNet whose config names no pack since the fused default): this
    threshold and the pack's confirmation floor are on another scale."""
    m = load_manifest(pack)
    if dlog is not None and dlog.embedder_id != m.embedder["id"]:
        log.warning("[models] pack %s embeds as %r, but the change log %s holds %r: its "
                    "threshold and confirm_floor are on another scale; name the log's pack "
                    "in [models] pack (e.g. \"mtcnn-facenet\")", pack, m.embedder["id"],
                    dlog.path, dlog.embedder_id)
    return float(m.embedder["match_threshold"])


def cmd_calibration(args: argparse.Namespace) -> int:
    """Show the district's operating point; derive it when asked, stale or missing."""
    dlog = _open(args)
    cfg = load_district_config(_config_path(args))
    settings = cfg.calibration
    citizens = dlog.info().citizen_count

    def progress(done: int, total: int) -> None:
        print(f"\rscoring citizens against each other: {done}/{total}", end="",
              file=sys.stderr, flush=True)

    point = calib.stored(dlog)
    if not args.show and (args.recompute or calib.is_stale(point, citizens, settings)):
        point = calib.recompute(dlog, settings,
                                pack_threshold=pack_threshold(cfg.models.pack, dlog),
                                progress=progress)
        print(file=sys.stderr)
    if point is None:
        print(f"no operating point derived yet ({citizens} citizens)")
        dlog.close()
        return 0
    at = datetime.datetime.fromtimestamp(point.derived_at_ms / 1000, datetime.timezone.utc)
    print(f"operating point: threshold {point.threshold:.3f}, margin {point.margin:.3f}, "
          + (f"confirm (date of birth [+ 4 digits]) from {point.confirm_threshold:.3f}"
             if point.confirm_threshold else "no confirmation step"))
    print(f"target FPIR {point.target_fpir:g}; predicted {point.predicted_fpir:.2e} "
          f"(face alone {point.predicted_sure:.2e} + confirmation guessed "
          f"{point.predicted_confirm:.2e})")
    print(f"derived at {at.isoformat(timespec='seconds')} from {point.gallery_size} citizens "
          f"(now {citizens}; re-derived past a {settings.recompute_share:.0%} change), "
          f"{point.duplicate_pairs} duplicate pair(s) left out (>= {settings.duplicate_score})"
          f", {point.seconds:.1f} s")
    print(f"confirmation secret ({settings.confirm_secret}): date of birth + the personal "
          f"number's last 4 digits for {point.secret_id4_share:.1%} of the citizens; guess "
          f"bound {settings.confirm_tries} tries x candidates / {settings.plausible_dates} "
          f"plausible dates (x {settings.id4_combinations} with the 4 digits); confirmation "
          f"never below {settings.floor:.2f} (pack {cfg.models.pack})")
    if point.method == "pack":
        print(f"WARNING: {point.gallery_size} citizens < [calibration] min_gallery "
              f"{settings.min_gallery}: too few to predict a rate of {point.target_fpir:g}; "
              "the model pack's threshold is published, without a confirmation step")
    print("known limits:")
    for line in calib.LIMITS:
        print(f"  - {line}")
    dlog.close()
    return 0


def cmd_publish(args: argparse.Namespace) -> int:

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dlog = _open(args)
    key = load_private_key(args.key)
    cfg = load_district_config(_config_path(args))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pub = Publisher(
        dlog,
        key,
        broker_settings(args),
        prefix=args.prefix,
        client_id=args.client_id,
        stop=stop,
        replay_window=args.replay_window or REPLAY_WINDOW,
        batch_max_changes=args.batch_max_changes or BATCH_MAX_CHANGES,
        calibration=cfg.calibration,
        pack_threshold=pack_threshold(cfg.models.pack, dlog),
    )
    log.info(
        "publishing district %s from %s (head %d, published %d)",
        dlog.district_id,
        args.db,
        dlog.head_seq,
        dlog.published_seq,
    )
    pub.run()
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:

    head, rows = collect(
        broker_settings(args), Topics(args.prefix, args.district), timeout_s=args.timeout
    )
    print(format_table(head, rows))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if path is None:
        raise ConfigError("--config: the district's configuration file is required to serve")
    setup_json_logging()
    cfg = load_district_config(path)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    svc = DistrictService(cfg, stop_event=stop, listen=args.listen).start()
    svc.wait()
    if svc.publisher._auth_error:
        raise AuthenticationError(svc.publisher._auth_error)
    if svc.publisher.fatal_error is not None:
        raise svc.publisher.fatal_error
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    cfg = load_district_config(_config_path(args))
    db = args.db or cfg.district.db
    if db is None:
        raise ConfigError("--db: give the change log, or [district] db in --config")
    return run_import(cfg, db, args.file, progress=not args.quiet)


def _console_cfg(args: argparse.Namespace) -> ConsoleSection:
    path = _config_path(args)
    if path is None:
        return ConsoleSection()
    table = dict(read_toml(path).get("console", {}))
    # read as if off: these commands make the very files an enabled console requires
    return build_section(ConsoleSection, {**table, "enabled": False}, "console")


def cmd_console_user_add(args: argparse.Namespace) -> int:
    users = args.users_file or _console_cfg(args).users_file
    if users is None:
        raise ConfigError("--users-file: give the file, or [console] users_file in --config")
    check_user_name(args.name)
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("password: the two entries differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    new = add_user(users, args.name, password)
    print(f"{'added' if new else 'replaced'} console user {args.name} in {users}")
    return 0


def cmd_console_cert(args: argparse.Namespace) -> int:
    con = _console_cfg(args)
    cert, key = args.cert or con.tls_cert_file, args.key or con.tls_key_file
    if cert is None or key is None:
        raise ConfigError("--cert/--key: give both, or [console] tls_cert_file and "
                          "tls_key_file in --config")
    make_self_signed(cert, key, args.host)
    print(f"wrote {cert} and {key} (self-signed, for a test install: browsers will warn)")
    return 0


def cmd_openapi(_args: argparse.Namespace) -> int:
    sys.stdout.write(openapi_json(schema_app()))
    return 0
