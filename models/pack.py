"""Model packs: read a pack manifest and load a built pack with every file's sha256 checked.

A pack is a detector plus an embedder. Its manifest ships with the software
(``models/packs/<name>.toml``, schema in docs/models.md) and is the authority for the
files' hashes and the pack's settings; the built files live in ``<model_dir>/<name>/``
together with a copy of the manifest (for export and for people).

    pack = load_pack(config.models.dir, config.models.pack)
    pack.embedder.path, pack.embedder.match_threshold, pack.detector.files["pnet"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib  # novermin (guarded: Python 3.10 takes the tomli branch below)
else:  # Python 3.10 (JetPack 6): the same parser from PyPI
    import tomli as tomllib

#: folder of the manifests shipped with the software
PACKS_DIR = Path(__file__).resolve().parent / "packs"
#: name of the manifest copy inside a built pack directory
MANIFEST_NAME = "manifest.toml"
#: the manifest schema version this code reads
SCHEMA = 1
#: read files in 1 MiB chunks when hashing: large enough to be fast, small enough for a Pi
_CHUNK = 1 << 20

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Source:
    """A registry package a pack's files are taken from."""

    id: str
    registry: str
    package: str
    version: str
    filename: str
    sha256: str
    licence: str
    upstream: str


@dataclasses.dataclass(frozen=True)
class PackFile:
    """One file of a pack and how it was made."""

    name: str
    sha256: str
    source: str
    member: str
    member_sha256: str
    build: str
    steps: tuple[str, ...]
    convert: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """The pack's detector: its kind, its files (role -> absolute path) and its settings."""

    kind: str
    files: Mapping[str, Path]
    params: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class EmbedderSpec:
    """The pack's embedder and the embedding space it produces."""

    kind: str
    id: str
    path: Path
    input_name: str
    output_name: str
    layout: str
    color: str
    input_size: tuple[int, int]
    preprocessing: str
    margin: int
    dim: int
    metric: str
    match_threshold: float
    #: lowest confirmation threshold a district derives with this embedder (a cosine on
    #: its scale; ``[calibration] confirm_floor`` overrides it)
    confirm_floor: float
    params: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed and validated pack manifest (no files touched)."""

    name: str
    description: str
    licence: str
    weights_origin: str
    sources: Mapping[str, Source]
    build_requirements: tuple[str, ...]
    build_constraints: tuple[str, ...]
    files: Mapping[str, PackFile]
    detector: Mapping[str, Any]
    embedder: Mapping[str, Any]
    text: str

    @property
    def sha256(self) -> str:
        """sha256 of the manifest text (identifies exactly this manifest)."""
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ModelPack:
    """A loaded pack: manifest values plus absolute paths of its verified files."""

    name: str
    dir: Path
    manifest: Manifest
    files: Mapping[str, Path]
    detector: DetectorSpec
    embedder: EmbedderSpec

    @property
    def licence(self) -> str:
        return self.manifest.licence


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def known_packs() -> list[str]:
    """Names of the packs whose manifests ship with this software."""
    return sorted(p.stem for p in PACKS_DIR.glob("*.toml"))


def manifest_path(name: str) -> Path:
    """Path of the shipped manifest of pack ``name`` (ModelError when unknown)."""
    if not _NAME_RE.match(name):
        raise ModelError(f"invalid model pack name {name!r}")
    path = PACKS_DIR / f"{name}.toml"
    if not path.is_file():
        raise ModelError(f"unknown model pack {name!r} (known: {', '.join(known_packs())})")
    return path


def load_manifest(name: str) -> Manifest:
    """Read and validate the shipped manifest of pack ``name``."""
    path = manifest_path(name)
    manifest = parse_manifest(path.read_text(encoding="utf-8"), str(path))
    if manifest.name != name:
        raise ModelError(f"{path}: name: is {manifest.name!r}, expected {name!r}")
    return manifest


def pack_confirm_floor(name: str) -> float:
    """Pack ``name``'s ``[embedder] confirm_floor`` from its shipped manifest (no files
    read): the district's default lowest confirmation threshold for that embedder."""
    return float(load_manifest(name).embedder["confirm_floor"])


class _Reader:
    """Typed access to a TOML table; errors name the manifest and the key."""

    def __init__(self, where: str, data: Mapping[str, Any], prefix: str = "") -> None:
        self.where, self.data, self.prefix = where, data, prefix

    def _fail(self, key: str, what: str) -> ModelError:
        return ModelError(f"{self.where}: {self.prefix}{key}: {what}")

    def get(self, key: str, tp: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self._fail(key, "missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) and tp is not bool or not isinstance(value, tp):
            names = tp.__name__ if isinstance(tp, type) else " or ".join(t.__name__ for t in tp)
            raise self._fail(key, f"expected {names}, got {value!r}")
        return value

    def sha(self, key: str) -> str:
        value = self.get(key, str)
        if not _SHA_RE.match(value):
            raise self._fail(key, f"expected a lowercase hex sha256, got {value!r}")
        return value

    def table(self, key: str) -> _Reader:
        return _Reader(self.where, self.get(key, dict), f"{self.prefix}{key}.")

    def file_name(self, key: str) -> str:
        value = self.get(key, str)
        if not _FILE_RE.match(value):
            raise self._fail(key, f"not a plain file name: {value!r}")
        return value


def parse_manifest(text: str, where: str = "manifest") -> Manifest:
    """Validate a manifest's TOML text; ModelError names the key on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{where}: not valid TOML: {exc}") from None
    top = _Reader(where, data)
    schema = top.get("schema", int)
    if schema != SCHEMA:
        raise ModelError(f"{where}: schema: {schema} is not supported (this code reads {SCHEMA})")
    name = top.get("name", str)
    if not _NAME_RE.match(name):
        raise ModelError(f"{where}: name: invalid pack name {name!r}")

    sources: dict[str, Source] = {}
    for sid in top.get("sources", dict):
        s = top.table("sources").table(sid)
        sources[sid] = Source(
            id=sid, registry=s.get("registry", str), package=s.get("package", str),
            version=s.get("version", str), filename=s.file_name("filename"),
            sha256=s.sha("sha256"), licence=s.get("licence", str),
            upstream=s.get("upstream", str, ""),
        )
    if any(s.registry != "pypi" for s in sources.values()):
        raise ModelError(f"{where}: sources: only registry 'pypi' is supported")

    files: dict[str, PackFile] = {}
    ftab = top.get("files", dict)
    if not ftab:
        raise ModelError(f"{where}: files: a pack needs at least one file")
    for fname in ftab:
        if not _FILE_RE.match(fname) or fname == MANIFEST_NAME:
            raise ModelError(f"{where}: files.{fname}: not a plain file name")
        f = top.table("files").table(fname)
        source = f.get("source", str)
        if source not in sources:
            raise ModelError(f"{where}: files.{fname}.source: no source {source!r}")
        steps = f.get("steps", list, [])
        if not all(isinstance(x, str) for x in steps):
            raise ModelError(f"{where}: files.{fname}.steps: expected a list of strings")
        files[fname] = PackFile(
            name=fname, sha256=f.sha("sha256"), source=source, member=f.get("member", str),
            member_sha256=f.sha("member_sha256"), build=f.get("build", str),
            steps=tuple(steps), convert=MappingProxyType(dict(f.get("convert", dict, {}))),
        )

    benv = top.table("build_env") if "build_env" in data else _Reader(where, {}, "build_env.")
    reqs = benv.get("requirements", list, [])
    cons = benv.get("constraints", list, [])
    for key, pins in (("requirements", reqs), ("constraints", cons)):
        if not all(isinstance(r, str) and "==" in r for r in pins):
            raise ModelError(f"{where}: build_env.{key}: expected pinned 'name==version'")

    detector = dict(top.get("detector", dict))
    embedder = dict(top.get("embedder", dict))
    _Reader(where, detector, "detector.").get("kind", str)
    e = _Reader(where, embedder, "embedder.")
    for key in ("kind", "id", "input_name", "output_name", "layout", "color",
                "preprocessing", "metric"):
        e.get(key, str)
    efile = e.file_name("file")
    if efile not in files:
        raise ModelError(f"{where}: embedder.file: {efile!r} is not in [files]")
    size = e.get("input_size", list)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ModelError(f"{where}: embedder.input_size: expected [height, width]")
    for key in ("margin", "dim"):
        if e.get(key, int) < 0:
            raise ModelError(f"{where}: embedder.{key}: must not be negative")
    e.get("match_threshold", (int, float))
    floor = e.get("confirm_floor", (int, float))
    if not 0.0 <= floor < 1.0:
        raise ModelError(f"{where}: embedder.confirm_floor: a cosine in [0, 1), got {floor!r}")

    return Manifest(
        name=name, description=top.get("description", str, ""),
        licence=top.get("licence", str), weights_origin=top.get("weights_origin", str, ""),
        sources=MappingProxyType(sources), build_requirements=tuple(reqs),
        build_constraints=tuple(cons),
        files=MappingProxyType(files), detector=MappingProxyType(detector),
        embedder=MappingProxyType(embedder), text=text,
    )


def _detector_spec(manifest: Manifest, paths: Mapping[str, Path]) -> DetectorSpec:
    files: dict[str, Path] = {}
    params: dict[str, Any] = {}
    for key, value in manifest.detector.items():
        if key == "kind":
            continue
        if isinstance(value, str) and value in paths:
            files[key] = paths[value]
        else:
            params[key] = value
    return DetectorSpec(kind=manifest.detector["kind"], files=MappingProxyType(files),
                        params=MappingProxyType(params))


_EMBEDDER_FIELDS = {f.name for f in dataclasses.fields(EmbedderSpec)} - {"path", "params"}


def _embedder_spec(manifest: Manifest, paths: Mapping[str, Path]) -> EmbedderSpec:
    e = dict(manifest.embedder)
    path = paths[e.pop("file")]
    known = {k: e.pop(k) for k in list(e) if k in _EMBEDDER_FIELDS}
    known["input_size"] = tuple(known["input_size"])
    known["match_threshold"] = float(known["match_threshold"])
    known["confirm_floor"] = float(known["confirm_floor"])
    # a setting naming another file of the pack (a second model) becomes its checked path
    params = {k: paths[v] if isinstance(v, str) and v in paths else v for k, v in e.items()}
    return EmbedderSpec(path=path, params=MappingProxyType(params), **known)


def data_file(name: str, sha256: str) -> Path:
    """A small data file shipped beside the manifests (e.g. a fused pack's centring
    vector), checked against ``sha256``; ModelError when missing, foreign or altered."""
    if not _FILE_RE.match(name) or name.endswith(".toml"):
        raise ModelError(f"model pack data file {name!r}: not a plain data file name")
    path = PACKS_DIR / name
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise ModelError(f"model pack data file {path}: {exc.strerror}") from None
    if digest != sha256:
        raise ModelError(f"model pack data file {path} fails its sha256 check "
                         f"(got {digest[:16]}…, expected {sha256[:16]}…)")
    return path


def verify_files(manifest: Manifest, pack_dir: Path) -> dict[str, Path]:
    """Check every file of ``manifest`` in ``pack_dir`` by sha256; return name -> path."""
    paths: dict[str, Path] = {}
    for f in manifest.files.values():
        path = pack_dir / f.name
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            raise ModelError(
                f"model pack {manifest.name!r}: {f.name} is missing in {pack_dir} "
                "(run `motcua models build` or install the pack)"
            ) from None
        except OSError as exc:
            raise ModelError(f"model pack {manifest.name!r}: cannot read {path}: "
                             f"{exc.strerror}") from None
        if digest != f.sha256:
            raise ModelError(
                f"model pack {manifest.name!r}: {f.name} fails its sha256 check "
                f"(got {digest[:16]}…, expected {f.sha256[:16]}…) in {pack_dir}"
            )
        paths[f.name] = path.resolve()
    return paths


def load_pack(model_dir: Path | str, name: str) -> ModelPack:
    """Load pack ``name`` from ``<model_dir>/<name>/``, verifying every file's sha256.

    Raises ModelError naming the file when one is missing or fails its hash.
    """
    manifest = load_manifest(name)
    pack_dir = Path(model_dir).expanduser().resolve() / name
    if not pack_dir.is_dir():
        raise ModelError(
            f"model pack {name!r} not found in {pack_dir.parent} "
            "(run `motcua models build` or `motcua models install PACK.tar`)"
        )
    paths = verify_files(manifest, pack_dir)
    return ModelPack(
        name=name, dir=pack_dir, manifest=manifest, files=MappingProxyType(paths),
        detector=_detector_spec(manifest, paths), embedder=_embedder_spec(manifest, paths),
    )
