"""Writer leases: who is writing an unfinished snapshot, and whether that writer is provably gone.

A snapshot writer publishes ``snapshots/<id>/writer.json`` before it writes anything else and
removes it after the manifest (`Lease`): the process id, the start time of that process (field
22 of ``/proc/<pid>/stat``, in clock ticks since boot, so a reused pid is told apart), the host
name, a digest of ``/etc/machine-id`` (systemd asks to keep the id itself confidential), the
kernel's boot id and the pid namespace. A deletion publishes
``snapshots/<id>/deleting.json`` first and removes it last, so a deletion that was cut short
is recognisable as garbage.

`writer_state(lease)` says whether the writer is alive, dead or unknown, as seen from here:

- ``dead`` only with proof: the lease was written on this machine (same host name and machine
  id) and either the machine has rebooted since (another boot id), or it was written in this
  boot and pid namespace and that pid is not running, is a zombie, or is a different process
  (another start time);
- ``alive``: the same checks find the writer running;
- ``unknown``: written on another machine, in another pid namespace (a container), or the
  facts are not readable here (not Linux). Treated as alive: nothing is ever cleaned up by
  age alone. `snapdb delete ID --force` removes such a snapshot once you know its writer is gone.

Same-machine proof assumes two machines never share a host name *and* a machine id (cloned VM
images that kept ``/etc/machine-id`` break that; regenerate it, as systemd recommends).

Uses only the standard library and the store; no PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from . import MissingError, Store

WRITER = "writer.json"
DELETING = "deleting.json"
FORMAT = "snapdb-lease/1"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _machine() -> str | None:
    """A digest of ``/etc/machine-id``, which systemd asks to keep confidential: the lease, in a
    shared bucket, carries only this."""
    mid = _read("/etc/machine-id")
    return hashlib.sha256(b"snapdb-lease:" + mid.encode()).hexdigest()[:32] if mid else None


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of process `pid`, or None if there is none."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    rest = raw[raw.rfind(")") + 2:].split()  # the command name may hold spaces and ")"
    if len(rest) < 20:
        return None
    return rest[0], rest[19]


@dataclass
class Lease:
    """The writer of an unfinished snapshot (or the process deleting one)."""

    snapshot_id: str
    source: str | None
    operation: str  # snapshot | delete
    pid: int
    pid_start: str | None
    host: str
    machine_id: str | None
    boot_id: str | None
    pid_ns: str | None
    started_at: str
    format: str = FORMAT

    @classmethod
    def mine(cls, snapshot_id: str, source: str | None, operation: str = "snapshot") -> Lease:
        pid = os.getpid()
        start = process_start(pid)
        return cls(snapshot_id=snapshot_id, source=source, operation=operation, pid=pid,
                   pid_start=start[1] if start else None, host=socket.gethostname(),
                   machine_id=_machine(), boot_id=_read("/proc/sys/kernel/random/boot_id"),
                   pid_ns=_pid_ns(), started_at=datetime.now(timezone.utc).isoformat())

    def describe(self) -> str:
        return f"snapdb {self.operation} (process {self.pid} on {self.host}, started {self.started_at})"


def key(snapshot_id: str, name: str = WRITER) -> str:
    return f"snapshots/{snapshot_id}/{name}"


def publish(store: Store, lease: Lease, name: str = WRITER) -> None:
    data = json.dumps(asdict(lease), indent=1).encode("utf-8")
    with store.writer(key(lease.snapshot_id, name)) as f:
        f.write(data)


def read(store: Store, snapshot_id: str, name: str = WRITER) -> Lease | None:
    """The lease, or None when there is none (or it is not one this snapdb can read)."""
    try:
        with store.reader(key(snapshot_id, name)) as f:
            data = json.loads(f.read())
        if data.get("format") != FORMAT:
            return None
        return Lease(**{k: data.get(k) for k in Lease.__dataclass_fields__})
    except (MissingError, ValueError, TypeError):
        return None


def writer_state(lease: Lease) -> str:
    """``alive``, ``dead`` or ``unknown`` (see module docstring)."""
    machine = _machine()
    if lease.host != socket.gethostname() or not lease.machine_id or lease.machine_id != machine:
        return "unknown"
    boot = _read("/proc/sys/kernel/random/boot_id")
    if not boot or not lease.boot_id:
        return "unknown"
    if lease.boot_id != boot:
        return "dead"  # this machine rebooted since the lease was written
    if not lease.pid_ns or lease.pid_ns != _pid_ns():
        return "unknown"
    try:
        pid = int(lease.pid)
    except (TypeError, ValueError):
        return "unknown"
    found = process_start(pid)
    if found is None:
        return "dead" if not os.path.exists(f"/proc/{pid}") else "unknown"
    state, start = found
    if state in ("Z", "X") or (lease.pid_start is not None and start != lease.pid_start):
        return "dead"
    return "alive"
