"""The console's logins: the users file (scrypt hashes), server-side sessions, CSRF
tokens and the bound on failed logins.

Users file: one line per user, ``name:scrypt:N:r:p:<salt b64>:<hash b64>``, mode 0600,
written by ``motcua district console-user add NAME``. Sessions live in the server's
memory only (a restart logs everyone out): a random id in a cookie, its CSRF token,
when it started and when it was last used. A user name or a client address with
``max_failures`` failed logins inside the lockout window is refused (without checking the
password) until the lockout ends.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import ConfigError

#: scrypt cost: N=2^14, r=8 takes 16 MiB (128*N*r) per check, and took 419 ms per check
#: (mean of 10) on the project's shared 2-core build machine while tests ran beside it:
#: slow for an offline guesser, acceptable once per login (the scrypt paper's interactive-login
#: parameters; OWASP now asks N=2^17: raise it if the server has the memory)
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
#: scrypt's memory is 128*N*r bytes (16 MiB); OpenSSL's default cap is 32 MiB
SCRYPT_MAXMEM = 64 << 20
SALT_BYTES = 16
HASH_BYTES = 32
#: password checks running at once: each takes 16 MiB and a core for a fraction of a
#: second, so a burst of logins cannot take the server's memory or both cores
CONCURRENT_CHECKS = 2
#: sessions kept at once; a district has tens of staff, the oldest beyond this are
#: logged out (a flood of logins cannot fill memory)
MAX_SESSIONS = 1000
#: user names and client addresses remembered for the failure bound; the quietest are
#: forgotten first (~200 bytes each)
MAX_TRACKED = 10_000
#: shortest password accepted by console-user add (a passphrase, not a PIN)
MIN_PASSWORD_LEN = 10
MAX_PASSWORD_LEN = 1024
USER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N,
                  r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The users-file form of a password: ``scrypt:N:r:p:salt:hash``."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                            maxmem=SCRYPT_MAXMEM, dklen=HASH_BYTES)
    return ":".join(["scrypt", str(n), str(r), str(p), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``hash_password`` string (constant-time compare)."""
    try:
        kind, n, r, p, salt, digest = stored.split(":")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode()[:MAX_PASSWORD_LEN * 4],
                             salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                             p=int(p), maxmem=SCRYPT_MAXMEM, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


#: checked for unknown users too, so an answer's timing does not tell who exists
_DUMMY = hash_password("not a password", salt=b"\0" * SALT_BYTES)


def check_user_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise ConfigError(f"console user {name!r}: 1-64 letters, digits, '_', '.', '-'")
    return name


def read_users(path: Path, key: str = "console.users_file") -> dict[str, str]:
    """name -> stored hash; ConfigError naming ``key`` when unreadable, malformed or
    readable by others than the owner."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist "
                          "(motcua district console-user add NAME)") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"{key}: {path} is readable by others (chmod 600 {path})")
    users: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, stored = line.partition(":")
        if not USER_NAME.match(name) or not stored.startswith("scrypt:") \
                or stored.count(":") != 5:
            raise ConfigError(f"{key}: {path} line {i}: expected name:scrypt:N:r:p:salt:hash")
        users[name] = stored
    return users


def add_user(path: Path, name: str, password: str) -> bool:
    """Add or replace a user in the users file (created mode 0600); True if new."""
    check_user_name(name)
    if not MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN:
        raise ConfigError(f"password: {MIN_PASSWORD_LEN}..{MAX_PASSWORD_LEN} characters")
    users = read_users(path) if path.exists() else {}
    new = name not in users
    users[name] = hash_password(password)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# motcua operator console users (motcua district console-user add)\n")
        for n in sorted(users):
            f.write(f"{n}:{users[n]}\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return new


@dataclasses.dataclass
class Session:
    sid: str
    user: str
    csrf: str
    created: float
    last_seen: float
    lang: str = "vi"


class Sessions:
    """Server-side sessions: random ids, absolute and idle expiry, bounded count."""

    def __init__(self, *, lifetime_s: float, idle_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 max_sessions: int = MAX_SESSIONS) -> None:
        self.lifetime_s, self.idle_s, self.clock = lifetime_s, idle_s, clock
        self.max_sessions = max_sessions
        self._by_id: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._lock = threading.Lock()

    def create(self, user: str, lang: str = "vi") -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now, lang)
        with self._lock:
            self._by_id[s.sid] = s
            while len(self._by_id) > self.max_sessions:
                self._by_id.popitem(last=False)
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session with this id (its idle timer restarts), else None."""
        if not sid or len(sid) > 100:
            return None
        now = self.clock()
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            if now - s.created > self.lifetime_s or now - s.last_seen > self.idle_s:
                del self._by_id[sid]
                return None
            s.last_seen = now
            return s

    def end(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)

    def __len__(self) -> int:
        return len(self._by_id)


class FailureBound:
    """Counts failed logins per key (a user name, a client address); ``max_failures``
    inside ``window_s`` locks the key for ``window_s`` from the last failure."""

    def __init__(self, *, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._fails: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def locked(self, key: str) -> bool:
        now = self.clock()
        with self._lock:
            times = [t for t in self._fails.get(key, []) if now - t < self.window_s]
            return len(times) >= self.max_failures

    def fail(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            times = [t for t in self._fails.pop(key, []) if now - t < self.window_s]
            times.append(now)
            self._fails[key] = times[-self.max_failures:]
            while len(self._fails) > MAX_TRACKED:
                self._fails.popitem(last=False)

    def clear(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


class Authenticator:
    """Checks logins against the users file (re-read when it changes on disk)."""

    def __init__(self, users_file: Path, *, max_failures: int, lockout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users_file = users_file
        self._users = read_users(users_file)
        self._mtime = users_file.stat().st_mtime_ns
        self.by_user = FailureBound(max_failures=max_failures, window_s=lockout_s, clock=clock)
        self.by_addr = FailureBound(max_failures=max_failures, window_s=lockout_s, clock=clock)
        self._checks = threading.BoundedSemaphore(CONCURRENT_CHECKS)

    def _users_now(self) -> dict[str, str]:
        try:
            mtime = self.users_file.stat().st_mtime_ns
            if mtime != self._mtime:  # console-user add while serving: no restart
                self._users, self._mtime = read_users(self.users_file), mtime
        except (OSError, ConfigError):
            pass  # keep the last good list
        return self._users

    def login(self, user: str, password: str, addr: str) -> str:
        """'ok', 'locked' (too many failures for that user or address) or 'wrong'."""
        user_key = user[:64].lower()
        if self.by_user.locked(user_key) or self.by_addr.locked(addr):
            return "locked"
        stored = self._users_now().get(user)
        with self._checks:
            ok = verify_password(password[:MAX_PASSWORD_LEN], stored or _DUMMY)
        if ok and stored is not None:
            self.by_user.clear(user_key)
            return "ok"
        self.by_user.fail(user_key)
        self.by_addr.fail(addr)
        return "wrong"


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a form's CSRF token with the session's."""
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())
