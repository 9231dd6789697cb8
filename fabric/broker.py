"""Brokers: a mosquitto launcher and the embedded one (iotcore, in a child process).

`broker_for(settings)` gives the fabric a broker: the external one at FOA_BROKER_URL when set,
otherwise a local one bound to 127.0.0.1 (`local_broker`: mosquitto when installed, the
embedded iotcore broker as the zero-install fallback).

A broker a local federation starts must not outlive it (an orphaned mosquitto keeps its port and
its persistence directory, and the next `foa up` would start a second one on the same files):
it runs in its own process group and, on Linux, receives SIGTERM the moment its parent dies
(`PR_SET_PDEATHSIG`, `die_with_parent=True`), SIGKILL of the parent included. It records its pid
in `broker.pid` next to its persistence file, so leftovers of a run that died anyway (another
OS, an older version) are found and stopped by `reap_orphans` before a new one starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fabric.bus import BrokerAddress
from fabric.settings import Settings

log = logging.getLogger("foa.broker")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


RUMQTTD_V5_CONF = """\
id = 0

[router]
id = 0
max_connections = {max_connections}
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[v5.1]
name = "foa-v5"
listen = "{host}:{port}"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = {max_payload}
    max_inflight_count = 1000
    dynamic_filters = true
"""


class LocalBroker:
    """A broker process this program owns, reachable at host:port."""

    host: str
    port: int

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(self.host, self.port)

    @property
    def url(self) -> str:
        return self.address.url

    def start(self) -> LocalBroker:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker(LocalBroker):
    """iotcore's MQTT v5 broker (rumqttd) in a child process that dies with its parent.

    iotcore's keyword configuration starts an MQTT 3.1.1 listener only; the fabric speaks v5,
    so we hand it a rumqttd TOML with a v5 listener.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_payload_bytes: int = 1024 * 1024) -> None:
        from iotcore import Broker  # imported lazily: only the embedded mode needs it

        self.host = host
        self.port = port or free_port(host)
        self._conf_dir = tempfile.TemporaryDirectory(prefix="foa-iotcore-")
        conf = Path(self._conf_dir.name) / "rumqttd.toml"
        conf.write_text(
            RUMQTTD_V5_CONF.format(host=host, port=self.port, max_payload=max_payload_bytes, max_connections=20_000)
        )
        self._broker = Broker(config_path=str(conf))

    def start(self) -> EmbeddedBroker:
        self._broker.start()
        log.info("embedded broker listening", extra={"url": self.url})
        return self

    def stop(self) -> None:
        self._broker.stop()


MOSQUITTO_CONF = """\
{user}listener {port} {host}
allow_anonymous {anonymous}
set_tcp_nodelay true
persistence {persistence}
persistence_location {data_dir}/
autosave_interval 1
max_packet_size {max_packet}
max_inflight_messages 1000
max_queued_messages 100000
log_dest file {data_dir}/mosquitto.log
log_type error
log_type warning
{extra}
"""


PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: loaded before any fork: the child between fork and exec only calls into it
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a forked child (before exec, or instead of it): `sig` to this process when its parent
    dies. A no-op off Linux (`reap_orphans` is the fallback there). Only async-signal-safe calls:
    ctypes prctl. A child that runs Python without exec (a snapshot writer) asks for SIGKILL:
    it inherited the parent's SIGTERM handler, which would only note the signal."""
    if _LIBC is None:
        return
    parent = os.getppid()
    _LIBC.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent or parent == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphan_brokers(data_dir: Path) -> list[int]:
    """mosquitto processes still using `data_dir` (its mosquitto.conf): from its pid file, and on
    Linux from /proc (a broker of a version that wrote none)."""
    conf = str((data_dir / "mosquitto.conf").resolve())
    found: set[int] = set()
    pid_file = data_dir / "broker.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().split()[0])
            if pid_alive(pid) and (not Path("/proc").exists() or conf in _cmdline(pid)):
                found.add(pid)
        except (ValueError, IndexError, OSError):
            pass
    if Path("/proc").exists():
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                cmd = _cmdline(int(entry.name))
                if cmd and "mosquitto" in Path(cmd[0]).name and conf in cmd:
                    found.add(int(entry.name))
    return sorted(found)


def reap_orphans(data_dir: Path, timeout: float = 5.0) -> list[int]:
    """Stop brokers a dead run left on `data_dir` (SIGTERM: mosquitto saves its persistence file
    first; SIGKILL after `timeout`), and remove its stale pid file. Returns the pids stopped.
    Call it only while holding the data directory's lock (`fabric.federation.DataDirLock`):
    then no live federation owns them."""
    pids = orphan_brokers(data_dir)
    for pid in pids:
        log.warning("stopping a broker left by a dead federation", extra={"pid": pid, "data_dir": str(data_dir)})
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (data_dir / "broker.pid").unlink(missing_ok=True)
    return pids


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


class Mosquitto(LocalBroker):
    """A mosquitto process we own: tests, CI and `foa up --mosquitto` use it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: Path | None = None,
        persistence: bool = True,
        extra_conf: str = "",
        anonymous: bool = True,
        max_packet: int = 2 * 1024 * 1024,
        die_with_parent: bool = False,
    ) -> None:
        """`die_with_parent`: the broker gets SIGTERM when the thread that starts it exits, so
        start it from the main thread of a long-lived process (`foa up`), not a worker thread."""
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="foa-mosquitto-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.data_dir / "mosquitto.conf"
        self.conf_path.write_text(
            MOSQUITTO_CONF.format(
                port=self.port,
                host=host,
                anonymous="true" if anonymous else "false",
                persistence="true" if persistence else "false",
                data_dir=self.data_dir,
                max_packet=max_packet,
                extra=extra_conf,
                # started as root, mosquitto drops to user 'mosquitto' and then cannot write
                # its persistence file or log in our data dir: stay who we are
                user="user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else "",
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self.die_with_parent = die_with_parent
        self.pid_file = self.data_dir / "broker.pid"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path.resolve())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a Ctrl+C in the shell goes to us, not it
            preexec_fn=die_with_parent if self.die_with_parent else None,  # only prctl runs there
        )
        self.pid_file.write_text(f"{self._proc.pid} {self.port}\n")
        try:
            wait_listening(self.host, self.port, timeout)
        except RuntimeError:
            err = self._proc.stderr.read().decode() if self._proc.poll() is not None and self._proc.stderr else ""
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {err or 'timeout'}") from None
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: mosquitto saves its persistence file on SIGTERM."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def local_broker(settings: Settings) -> LocalBroker:
    """The broker a local federation starts (not yet started).

    `auto` prefers mosquitto when it is installed: iotcore 0.4's rumqttd re-sends a shared
    subscription's unacknowledged message in a tight loop under the orchestrator's traffic
    (seen here: 300k redeliveries a minute, replies starved), while mosquitto is the reference
    broker every test runs on. iotcore remains the zero-install fallback.
    """
    choice = settings.embedded_broker
    if choice == "mosquitto" or (choice == "auto" and mosquitto_binary() is not None):
        return Mosquitto(
            settings.embedded_broker_host,
            settings.embedded_broker_port,
            data_dir=settings.data_dir / "broker",
            persistence=True,
            die_with_parent=True,
        )
    if choice == "auto":
        log.warning("mosquitto is not installed; using the in-process iotcore broker")
    return EmbeddedBroker(settings.embedded_broker_host, settings.embedded_broker_port)


@contextmanager
def broker_for(settings: Settings) -> Iterator[BrokerAddress]:
    """The external broker when FOA_BROKER_URL is set, else a local one for this block."""
    if settings.broker_url:
        yield BrokerAddress.parse(settings.broker_url)
        return
    broker = local_broker(settings)
    broker.start()
    try:
        yield broker.address
    finally:
        broker.stop()
