"""A two-node ejabberd MQTT cluster on loopback for the tests (docs/scale.md).

Debian's ``ejabberd`` package (23.01 on bookworm) is installed by scripts/install.sh, but
its service is never used: every node here is an ``erl`` started as the current user
with its own directory (config, Mnesia spool, log), its own node name and Erlang
cookie, on its own MQTT port, and one ``epmd`` of our own on a port of our own, so
that nothing is shared with a system ejabberd or with another test run. Nodes are
joined with ``ejabberd_admin:join_cluster`` (what ``ejabberdctl join_cluster`` calls)
and users are registered with ``ejabberd_auth:try_register``, both through a hidden
control node (``erl -hidden -eval``), since ``ejabberdctl`` switches to the
``ejabberd`` system user when run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from core.errors import SyncError
from sync.localbroker import PortReservation, free_port
from sync.mqtt import MAX_PACKET_BYTES

#: Debian's ejabberd application file, under the multiarch library directory that
#: ejabberdctl passes as ERL_LIBS (/usr/lib/x86_64-linux-gnu on amd64)
EJABBERD_APP_GLOB = "/usr/lib/*/ejabberd-*/ebin/ejabberd.app"
#: an ejabberd node starts in ~1 s here; 60 s covers a loaded 2-core CI machine
START_TIMEOUT_S = 60.0
#: a control call (start a hidden node, one rpc, halt) takes ~1 s
CONTROL_TIMEOUT_S = 60.0
#: the XMPP domain the MQTT logins belong to (user "t-a" is t-a@DOMAIN)
DOMAIN = "motcua.test"


def _config(port: int, district: str, district_user: str, prefix: str,
            tls: tuple[Path, Path] | None) -> str:
    """ejabberd.yml for one node: MQTT only (over TLS with ``tls`` = (certificate, key)),
    logins, the project's ACL (the same rules as deploy/mosquitto/motcua-sync.acl, with
    ``%u`` = the login)."""
    base = f"{prefix}/{district}"
    certfiles = f'certfiles: ["{tls[0]}", "{tls[1]}"]' if tls else ""
    return f"""\
hosts: ["{DOMAIN}"]
loglevel: info
log_rotate_count: 0
auth_method: [internal]
{certfiles}
listen:
  -
    port: {port}
    ip: "127.0.0.1"
    module: mod_mqtt
    backlog: 1000
    tls: {"true" if tls else "false"}
    # the largest PUBLISH payload the broker takes (MAX_PACKET_BYTES in sync/mqtt.py)
    max_payload_size: {MAX_PACKET_BYTES}
acl:
  district:
    user: "{district_user}"
access_rules:
  district:
    allow: district
  anyone:
    allow: all
modules:
  mod_mqtt:
    # a week, like the terminals' SessionExpiryInterval (sync/mqtt.py)
    session_expiry: 604800
    max_queue: 5000
    access_publish:
      "{base}/gallery/#": district
      "{base}/terminal/%u/request": anyone
      "{base}/terminal/%u/report": anyone
      "{base}/terminal/%u/state": anyone
      "{base}/terminal/%u/status": anyone
    access_subscribe:
      "{base}/terminal/#": district
      "{base}/gallery/batch": anyone
      "{base}/gallery/manifest": anyone
      "{base}/gallery/direct/%u": anyone
      "{base}/terminal/%u/state": anyone
      "{base}/terminal/%u/status": anyone
"""


class EjabberdNode:
    """One ejabberd node (an ``erl`` process) of an :class:`EjabberdCluster`."""

    def __init__(self, cluster: EjabberdCluster, name: str) -> None:
        self.cluster = cluster
        self.dir = cluster.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node = f"{name}{cluster.token}@127.0.0.1"
        self.host = "127.0.0.1"
        #: the MQTT port stays ours while the node is down (kill, then start again)
        self._port = PortReservation(self.host)
        self.port = self._port.port
        self.log_path = self.dir / "ejabberd.log"
        self.conf_path = self.dir / "ejabberd.yml"
        self.conf_path.write_text(
            _config(self.port, cluster.district, cluster.district_user, cluster.prefix,
                    cluster.tls))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EjabberdNode:
        """Start the node and wait until its MQTT port answers."""
        self.spawn()
        self.wait_listening()
        return self

    def spawn(self) -> None:
        """Start the node's VM (not waiting for it)."""
        assert self.proc is None, "already running"
        env = {**self.cluster.env, "HOME": str(self.dir),
               "EJABBERD_CONFIG_PATH": str(self.conf_path),
               "EJABBERD_LOG_PATH": str(self.log_path)}
        self.proc = subprocess.Popen(
            ["erl", "-name", self.node, "-setcookie", self.cluster.cookie, "-noinput",
             *self.cluster.dist_args,
             "-mnesia", "dir", f'"{self.dir / "spool"}"', "-s", "ejabberd"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_listening(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise SyncError(f"ejabberd node {self.node} exited: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise SyncError(f"ejabberd node {self.node} did not open {self.port}: "
                        f"{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the node's process group (the VM and its helper processes), like a
        power cut of that machine."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.kill()
        self._port.close()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class EjabberdCluster:
    """Nodes named ``names`` joined into one ejabberd cluster (the first is the seed),
    with MQTT logins ``users`` (name -> password) registered; ``tls``: the listeners'
    (certificate, key), else plain TCP."""

    def __init__(self, workdir: Path, *, names: tuple[str, ...] = ("a", "b"),
                 users: dict[str, str], district: str, district_user: str,
                 prefix: str = "motcua/v1", tls: tuple[Path, Path] | None = None) -> None:
        apps = sorted(glob.glob(EJABBERD_APP_GLOB))
        if not apps or shutil.which("erl") is None or shutil.which("epmd") is None:
            raise SyncError("ejabberd is not installed (scripts/debian-packages.txt)")
        erl_libs = str(Path(apps[-1]).parents[2])
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.district, self.district_user, self.prefix = district, district_user, prefix
        #: (certificate, key) of the MQTT listeners' TLS (both nodes); None = plain TCP
        self.tls = tls
        self.users = users
        #: node names and the cookie are ours alone (another run on this machine, or a
        #: system ejabberd, can neither join nor be joined)
        self.token = secrets.token_hex(4)
        self.cookie = secrets.token_hex(16)
        self.epmd_port = free_port()
        self.env = {**os.environ, "ERL_LIBS": erl_libs,
                    "ERL_EPMD_PORT": str(self.epmd_port),
                    "ERL_EPMD_ADDRESS": "127.0.0.1", "ERL_CRASH_DUMP_BYTES": "0"}
        #: Erlang distribution on loopback only
        self.dist_args = ["-kernel", "inet_dist_use_interface", "{127,0,0,1}"]
        self.epmd: subprocess.Popen[bytes] | None = None
        self.nodes = [EjabberdNode(self, n) for n in names]

    def start(self) -> EjabberdCluster:
        try:
            self._start_epmd()
            for node in self.nodes:  # all VMs boot at once (each takes ~1 s of CPU)
                node.spawn()
            for node in self.nodes:
                node.wait_listening()
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                self.control(node, f"ejabberd_admin:join_cluster(<<\"{seed.node}\">>)", "ok")
                node.wait_listening()  # joining restarts ejabberd on that node
            # one control call (each starts an Erlang VM): register, then list the members
            registrations = "".join(
                f"ejabberd_auth:try_register(<<\"{u}\">>, <<\"{DOMAIN}\">>, <<\"{p}\">>), "
                for u, p in self.users.items())
            members = sorted(f"'{n.node}'" for n in self.nodes)
            got = self.control(seed, f"[{registrations}lists:sort(ejabberd_admin:list_cluster())]")
            want = "[" + "ok," * len(self.users) + "[" + ",".join(members) + "]]"
            if "".join(got.split()) != want:
                raise SyncError(f"registering users and listing the cluster: {got!r}, "
                                f"expected {want}")
        except BaseException:
            self.close()
            raise
        return self

    def _start_epmd(self) -> None:
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.epmd.poll() is not None:
                raise SyncError(f"epmd exited (port {self.epmd_port} taken?)")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.epmd_port), timeout=0.2):
                return
            time.sleep(0.02)
        raise SyncError(f"epmd did not open port {self.epmd_port}")

    def control(self, node: EjabberdNode, expr: str, expect: str | None = None) -> str:
        """Evaluate the Erlang expression ``expr`` on ``node`` (through rpc from a hidden
        control node) and return what it printed; ``expect``: the required result."""
        ctl = f"ctl{secrets.token_hex(4)}@127.0.0.1"
        code = (f"R = rpc:call('{node.node}', erlang, apply, [fun() -> {expr} end, []]), "
                "io:format(\"~p~n\", [R]), halt().")
        try:
            out = subprocess.run(
                ["erl", "-name", ctl, "-setcookie", self.cookie, "-noinput", "-hidden",
                 *self.dist_args, "-eval", code],
                env={**self.env, "HOME": str(self.workdir)}, capture_output=True,
                timeout=CONTROL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise SyncError(f"control call on {node.node} timed out: {expr}") from None
        result = out.stdout.decode(errors="replace").strip()
        if expect is not None and result != expect:
            raise SyncError(f"{expr} on {node.node}: {result!r} "
                            f"{out.stderr.decode(errors='replace')[-500:]}\n{node.log_tail()}")
        return result

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self.epmd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.epmd.pid, signal.SIGKILL)
            self.epmd.wait()
            self.epmd = None

    def __enter__(self) -> EjabberdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
