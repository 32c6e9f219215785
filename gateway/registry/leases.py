"""Several nodes on one registry: who they are, their heartbeats, and what each holds.

PostgreSQL is the only coordinator; nothing here talks to another node.

* A node is a row in `nodes` (its name, and the instance of this start), refreshed by a
  heartbeat every third of `[cluster] takeover_seconds`.
* Outbox mail and OCR jobs are claimed with `SELECT ... FOR UPDATE SKIP LOCKED` (outbox.py,
  intake.py): the row gets `claimed_by` (the instance) and `lease_until`. The heartbeat pushes
  the leases of what the instance holds forward; a dead node's stop moving and expire, and
  another node claims them. Completing is conditional on still holding the claim.
* An IMAP folder is a row in `leases`, renewed by the same heartbeat: one node watches it, and
  another takes it over within `takeover_seconds` of the holder's last beat.
* A periodic job (archive, reminders, retention) runs under a session advisory lock on a
  connection of its own (named after the node's run), so it dies with the node, or is taken
  from a node that vanished without its connection being closed and no longer beats; `job_runs`
  records the period it ran for, so a node coming second within the same period skips it
  instead of doing it again. The lock
  can also go with its connection alone (a fail-over, an idle timeout) while its node runs on:
  a run recorded as started by a node that still beats is left to it.
* Every lease and claim is written and compared by the database's clock (`lease_clock`), never
  a node's own: two nodes whose clocks disagree still agree on whose claim has run out.

SQLite serves one node: no SKIP LOCKED and no advisory locks there (a write transaction
already excludes every other writer), the rest works alike.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway.registry.models import JobRun, Lease, Node, OcrJob, OutboxMail
from gateway.registry.reads import Reads
from gateway.registry.store import RegistryUnavailable, Store, lease_clock, utcnow

log = logging.getLogger("gateway.cluster")

_LOCK_SPACE = 724312  # advisory lock namespace of periodic jobs (724311: schema migrations)
T = TypeVar("T")


class ClaimLost(Exception):
    """A claimed job's result came back after the claim expired and another node took the job."""


class NodeConflict(Exception):
    """Another live node has this node's name."""


@dataclass(frozen=True)
class Skipped:
    """A periodic job not run here: another node runs it now, or ran it for this period."""

    reason: str


class JobStopped(Exception):
    """Raised by a periodic job's work when its node stops before the work is done. The run is
    left unfinished, as if the node had died in it, so that it is run again (see `due`)."""


def process_identity(pid: int) -> str | None:
    """What tells this pid's process from a later one of the same pid: the machine's boot id and
    the process's start time (in clock ticks since that boot). None where /proc does not tell (not
    Linux, or no such process)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
    # the fields are counted from after its last ")"; the start time is field 22.
    fields = stat.rpartition(")")[2].split()
    return f"{boot}/{fields[19]}" if len(fields) > 19 else None


def _alive(pid: int, process: str | None) -> bool:
    """Whether the process recorded as `pid` (and `process`, its identity) still runs on this host.
    A container started again gives its node the same small pid as before, and a host started
    again may too: that pid alive is another process unless its identity is the one recorded."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if process is None:  # recorded where /proc did not tell: the pid is all there is
        return True
    now = process_identity(pid)
    return now is None or now == process


class Cluster:
    """This node's membership: join, beat, lease, run once, leave."""

    def __init__(self, registry: Store, name: str, *, takeover_seconds: float = 60.0, max_claims: int = 5):
        self.registry = registry
        self.name = name
        self.instance = f"{name}#{uuid.uuid4().hex[:8]}"
        self.takeover = timedelta(seconds=takeover_seconds)
        self.host = socket.gethostname()
        registry.claimant = self.instance
        registry.lease_seconds = takeover_seconds
        registry.max_claims = max_claims
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._told_when_displaced: list[Callable[[], None]] = []
        self.displaced = threading.Event()
        self._kept: set[str] = set()  # leases a stop leaves to expire (see keep)

    @property
    def postgres(self) -> bool:
        return self.registry.engine.dialect.name == "postgresql"

    # -- membership -----------------------------------------------------
    def join(self) -> int:
        """Record this node; refuse if a live node has its name. What a dead earlier run of this
        node held is let go at once (it is ours). Returns how many claims were let go."""
        try:
            return self._join()
        except IntegrityError:  # both inserted the name's first row at once: neither saw the other
            raise NodeConflict(f"another node named {self.name!r} started at the same moment: give each node "
                               "its own [node] name") from None

    def _join(self) -> int:
        with self.registry.write() as conn:
            now = lease_clock(conn)
            skew = (utcnow() - now).total_seconds()
            if abs(skew) > self.takeover.total_seconds() / 6:
                log.warning("cluster: this node's clock is %.0f s %s the database's; claims and leases are timed "
                            "by the database, but letters and events by this clock: synchronise it (NTP)",
                            abs(skew), "ahead of" if skew > 0 else "behind")
            node = conn.execute(select(Node.host, Node.pid, Node.process, Node.heartbeat_at, Node.stopped_at)
                                .where(Node.name == self.name).with_for_update()).first()
            if node is not None:
                fresh = node.stopped_at is None and now - node.heartbeat_at < self.takeover
                if fresh and not (node.host == self.host and not _alive(node.pid, node.process)):
                    raise NodeConflict(
                        f"another node named {self.name!r} is alive (host {node.host}, pid {node.pid}, heartbeat "
                        f"{(now - node.heartbeat_at).total_seconds():.0f} s ago): give each node its own [node] name")
            values = {"instance": self.instance, "host": self.host, "pid": os.getpid(),
                      "process": process_identity(os.getpid()), "started_at": now, "heartbeat_at": now,
                      "stopped_at": None}
            if node is None:
                conn.execute(insert(Node).values(name=self.name, **values))
            else:
                conn.execute(update(Node).where(Node.name == self.name).values(**values))
            # An earlier instance of this node, matched as plain text: a name may hold `_` or `%`.
            earlier = f"{self.name}#"
            freed = conn.execute(update(OutboxMail).where(OutboxMail.claimed_by.startswith(earlier, autoescape=True),
                                                          OutboxMail.claimed_by != self.instance)
                                 .values(claimed_by=None, lease_until=None)).rowcount
            freed += conn.execute(update(OcrJob).where(OcrJob.claimed_by.startswith(earlier, autoescape=True),
                                                       OcrJob.claimed_by != self.instance)
                                  .values(claimed_by=None, lease_until=None)).rowcount
            freed += conn.execute(delete(Lease).where(Lease.holder.startswith(earlier, autoescape=True),
                                                      Lease.holder != self.instance)).rowcount
        return int(freed)

    def on_displaced(self, callback: Callable[[], None]) -> None:
        """`callback` is called (once, from the thread that finds it) when this run finds its record
        replaced: it was taken for dead and its name started again, or its record removed. At once
        if that was found already."""
        self._told_when_displaced.append(callback)
        if self.displaced.is_set():
            callback()

    def beat(self) -> None:
        """The heartbeat: this node is alive, and keeps what it holds for another takeover period.
        Only while its record is still this run's: one taken for dead (cut off from the registry
        past the takeover time, frozen) whose name was started again meanwhile renews nothing, claims
        nothing more, and is told to stop (`on_displaced`): two runs of one name would each take
        the other's work for its own."""
        if self.displaced.is_set():
            return
        with self.registry.write() as conn:
            now = lease_clock(conn)
            until = now + self.takeover
            if conn.execute(update(Node).where(Node.name == self.name, Node.instance == self.instance,
                                               Node.stopped_at.is_(None))
                            .values(heartbeat_at=now)).rowcount:
                conn.execute(update(OutboxMail).where(OutboxMail.claimed_by == self.instance)
                             .values(lease_until=until))
                conn.execute(update(OcrJob).where(OcrJob.claimed_by == self.instance).values(lease_until=until))
                conn.execute(update(Lease).where(Lease.holder == self.instance).values(expires_at=until))
                return
            now_run = conn.execute(select(Node.instance, Node.host).where(Node.name == self.name)).first()
        self._displace(now_run)

    def _displace(self, now_run: Any) -> None:
        self.displaced.set()
        self.registry.displaced = True
        log.error("ALERT cluster: this node's run %s was taken for dead and its record %s: it claims and renews "
                  "nothing more, and stops", self.instance,
                  f"replaced by {now_run.instance} on host {now_run.host}" if now_run is not None else "removed")
        for callback in self._told_when_displaced:
            try:
                callback()
            except Exception:  # one callback failing must not keep the others from being told
                log.exception("cluster: telling a part of this node to stop failed")

    def leave(self, *, sending: bool = False) -> None:
        """A clean stop: everything held goes back at once, for the other nodes to take (and
        uncounted: a claim given back is not a claim that never finished). `sending`: a delivery
        outlasted the stop's wait, and may still reach its relay: its mail is not handed to another
        node to send again, but left to expire (by then this process has ended); so are the leases
        given to `keep`."""
        with self.registry.write() as conn:
            now = lease_clock(conn)
            if not sending:  # mail counts only the sendings begun (outbox.py): a claim given back began none
                conn.execute(update(OutboxMail).where(OutboxMail.claimed_by == self.instance)
                             .values(claimed_by=None, lease_until=None))
            conn.execute(update(OcrJob).where(OcrJob.claimed_by == self.instance)
                         .values(claimed_by=None, lease_until=None, claims=OcrJob.claims - 1))
            conn.execute(delete(Lease).where(Lease.holder == self.instance, Lease.name.not_in(self._kept)))
            conn.execute(update(Node).where(Node.name == self.name, Node.instance == self.instance)
                         .values(stopped_at=now, heartbeat_at=now))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beating, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, *, sending: bool = False) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.leave(sending=sending)
        except RegistryUnavailable as exc:
            log.warning("cluster: could not hand back this node's claims (%s); they expire in %.0f s", exc,
                        self.takeover.total_seconds())

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _beating(self) -> None:
        interval = self.takeover.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                self.beat()
            except RegistryUnavailable as exc:
                log.warning("cluster: heartbeat not recorded: %s", exc)
            except Exception:  # the heartbeat must outlive a bug in one beat
                log.exception("cluster: heartbeat failed")

    # -- leases (IMAP folders) --------------------------------------------
    def acquire(self, name: str) -> bool:
        """Take the lease `name` if nobody holds it, or its holder stopped beating; True if held now.
        Never for a run taken for dead: its name runs elsewhere now."""
        if self.displaced.is_set():
            return False
        table = Lease.__table__
        with self.registry.write() as conn:
            now = lease_clock(conn)
            # Looked at here too, not only at the next beat: a run taken for dead that comes back
            # would otherwise take a folder beside the run of its name started since.
            run = conn.execute(select(Node.instance, Node.host).where(Node.name == self.name)).first()
            if run is None or run.instance == self.instance:
                ins = (pg_insert if self.postgres else sqlite_insert)(Lease).values(
                    name=name, holder=self.instance, acquired_at=now, expires_at=now + self.takeover)
                holder = conn.execute(ins.on_conflict_do_update(
                    index_elements=[Lease.name],
                    set_={"holder": ins.excluded.holder, "acquired_at": ins.excluded.acquired_at,
                          "expires_at": ins.excluded.expires_at},
                    where=or_(table.c.expires_at < now, table.c.holder == self.instance),
                ).returning(table.c.holder)).scalar()
                return holder == self.instance
        self._displace(run)
        return False

    def holds(self, name: str) -> bool:
        """Still ours and not expired (a node cut off from the registry loses its leases)."""
        if self.displaced.is_set():
            return False
        with self.registry.read() as conn:
            return bool(conn.execute(select(Lease.name).where(
                Lease.name == name, Lease.holder == self.instance, Lease.expires_at > lease_clock(conn))).first())

    def keep(self, name: str) -> None:
        """The stop's `leave` does not hand back the lease `name`: its work may still be under way
        (a watcher that outlasted the stop's wait). It expires on its own after the last beat."""
        self._kept.add(name)

    def release(self, name: str) -> None:
        with self.registry.write() as conn:
            conn.execute(delete(Lease).where(Lease.name == name, Lease.holder == self.instance))

    # -- periodic jobs, once across nodes -----------------------------------
    def once(self, job: str, slot: str, work: Callable[[], T]) -> T | Skipped:
        """Run `work` for the period `slot` (a month, an interval) unless another node runs it now
        or has run it for that period. The lock is a session advisory lock on a connection of its
        own: if this node dies mid-run the lock goes with it, and the job is not marked done, so
        the next run on any node does it."""
        with self.registry.read() as lock_conn:
            if self.postgres:
                key = zlib.crc32(job.encode()) - 2 ** 31  # a signed int4
                # The lock's connection is named for this node's run: see _take_lock_from_the_dead.
                lock_conn.execute(text("SELECT set_config('application_name', :name, false)"),
                                  {"name": self.instance})
                got = self._try_lock(lock_conn, key) or self._take_lock_from_the_dead(lock_conn, job, key)
                if not got:
                    return Skipped("another node runs it now")
            try:
                with self.registry.write() as conn:
                    # The others must take this node for alive while it runs the job: one whose
                    # heartbeat fell behind (its beats failing while it was cut off from the
                    # registry) would be taken for dead mid-run, its lock's connection ended and
                    # the job run again beside it. Its heartbeat is renewed here, with the run
                    # recorded; a run taken for dead and replaced by another start of its name
                    # runs nothing more.
                    if self.postgres and not conn.execute(
                            update(Node).where(Node.name == self.name, Node.instance == self.instance,
                                               Node.stopped_at.is_(None))
                            .values(heartbeat_at=lease_clock(conn))).rowcount:
                        log.error("ALERT cluster: %s for %s not run here: this node's run %s was taken for dead and "
                                  "its name started again", job, slot, self.instance)
                        return Skipped("this node's run was taken for dead")
                    done = conn.execute(select(JobRun.slot, JobRun.node, JobRun.finished_at)
                                        .where(JobRun.job == job).with_for_update()).first()
                    if done is not None and done.slot == slot and done.finished_at is not None:
                        return Skipped(f"done for {slot} by {done.node.partition('#')[0]}")
                    # The lock alone is not proof: it goes with its connection (a fail-over, an idle
                    # timeout), while the node holding it runs on. A run is under way while its
                    # node still beats.
                    if (done is not None and done.finished_at is None and done.node != self.instance
                            and self._beating_instance(conn, done.node)):
                        return Skipped(f"{done.node.partition('#')[0]} runs it now")
                    row = {"slot": slot, "node": self.instance, "started_at": utcnow(), "finished_at": None,
                           "outcome": None}
                    if done is None:
                        conn.execute(insert(JobRun).values(job=job, **row))
                    else:
                        conn.execute(update(JobRun).where(JobRun.job == job).values(**row))
                outcome = "failed"
                try:
                    result = work()
                    outcome = "done"
                    return result
                except JobStopped:
                    outcome = "stopped"
                    raise
                finally:
                    # A failed run is recorded as finished too: it is retried at its next period,
                    # as on one node, not again and again by every node. A stopped one is not
                    # finished: a node looking for missed runs does the rest (see `due`).
                    with self.registry.write() as conn:
                        recorded = conn.execute(
                            update(JobRun).where(JobRun.job == job, JobRun.node == self.instance)
                            .values(finished_at=None if outcome == "stopped" else utcnow(), outcome=outcome)).rowcount
                    if not recorded:
                        log.warning("cluster: %s for %s ended here (%s), but its run is recorded as another "
                                    "node's: this node was taken for dead meanwhile", job, slot, outcome)
            finally:
                if self.postgres:
                    try:
                        lock_conn.execute(text("SELECT pg_advisory_unlock(:space, :key)"),
                                          {"space": _LOCK_SPACE, "key": key})
                        lock_conn.commit()
                    except DBAPIError as exc:  # the connection went, and the lock with it
                        log.warning("cluster: the lock of %s went with its connection: %s", job, exc)

    @staticmethod
    def _try_lock(lock_conn: Connection, key: int) -> bool:
        got = bool(lock_conn.execute(text("SELECT pg_try_advisory_lock(:space, :key)"),
                                     {"space": _LOCK_SPACE, "key": key}).scalar())
        lock_conn.commit()
        return got

    def _take_lock_from_the_dead(self, lock_conn: Connection, job: str, key: int) -> bool:
        """The lock is held: by a node that no longer beats, its connection is ended and the lock
        taken. A node that vanished without its connection being closed (a power cut, a network
        cut) holds its lock until PostgreSQL notices, hours later by TCP keepalive: meanwhile no
        node would run the job. The holder is known by its connection's name (its node's run)."""
        holders = lock_conn.execute(text(
            "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = :space "
            "AND CAST(l.objid AS bigint) = CAST(:key AS bigint) & 4294967295"),
            {"space": _LOCK_SPACE, "key": key}).all()
        lock_conn.commit()
        if not holders:  # let go meanwhile
            return self._try_lock(lock_conn, key)
        with self.registry.read() as conn:
            dead = [(pid, name) for pid, name in holders
                    if name and "#" in name and name != self.instance and not self._beating_instance(conn, name)]
        if not dead or len(dead) != len(holders):
            return False
        for pid, name in dead:
            log.warning("cluster: the lock of %s is held by %s, which no longer beats (its node vanished without "
                        "closing its connection): its connection is ended", job, name.partition("#")[0])
            try:
                lock_conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                lock_conn.commit()
            except DBAPIError as exc:  # not ours to end (another role's): the lock goes when PostgreSQL notices
                lock_conn.rollback()
                log.warning("cluster: cannot end that connection: %s", exc.orig)
                return False
        for _ in range(50):  # its backend lets the lock go as it exits, a moment after being told
            if self._try_lock(lock_conn, key):
                return True
            time.sleep(0.1)
        return False

    # -- settings every node must be given alike ---------------------------
    def compare_settings(self, settings: dict[str, str]) -> dict[str, list[str]]:
        """Record this run's digests of the settings every node must be given alike, and compare
        them with those of every other live node: node name -> the names of those that differ."""
        with self.registry.write() as conn:
            conn.execute(update(Node).where(Node.name == self.name, Node.instance == self.instance)
                         .values(settings=json.dumps(settings, sort_keys=True)))
            others = conn.execute(select(Node.name, Node.settings).where(
                Node.name != self.name, Node.settings.is_not(None), Node.stopped_at.is_(None),
                Node.heartbeat_at > lease_clock(conn) - self.takeover)).all()
        differing = {}
        for name, recorded in others:
            theirs = json.loads(str(recorded))
            # A setting one side does not know (another release) is not compared.
            if keys := sorted(k for k in settings.keys() & theirs.keys() if settings[k] != theirs[k]):
                differing[name] = keys
        return differing

    def _beating_instance(self, conn: Connection, instance: str) -> bool:
        """Whether `instance` is a node's present run, not stopped, with a heartbeat younger than the
        takeover period."""
        return conn.execute(select(Node.name).where(
            Node.instance == instance, Node.stopped_at.is_(None),
            Node.heartbeat_at > lease_clock(conn) - self.takeover)).first() is not None


class RulesWatch:
    """Every node must classify by the same rules (the same file): one that runs other rules routes
    the same letter elsewhere than its neighbours. Each letter's classification records the rules'
    version; letters registered since the last look that were classified by another version than
    this node's are named, once per version, in an ALERT. For `grace_seconds` after this node's
    rules changed (its start, a reload) nothing is said: letters registered meanwhile may still
    have been classified by the rules it had before."""

    def __init__(self, registry: Reads, grace_seconds: float):
        self.registry = registry
        self.grace = grace_seconds
        self._version: str | None = None
        self._since = 0.0
        self._mark: int | None = None  # the newest letter at the last look
        self._told: set[str] = set()

    def check(self, version: str) -> set[str]:
        """Look at the letters registered since the last look; the other versions newly found."""
        now = time.monotonic()
        if version != self._version:
            self._version, self._since, self._told = version, now, set()
        seen, self._mark = self.registry.rules_since(self._mark)
        if now - self._since < self.grace:
            return set()
        other = seen - {version} - self._told
        if other:
            log.error("ALERT cluster: letters registered since the last look were classified by rules version %s, "
                      "this node's are version %s: another node runs other rules; give every node the same rules "
                      "file", ", ".join(sorted(other)), version)
            self._told |= other
        return other


class SettingsWatch:
    """Every node must be given alike the settings that decide where a letter goes, when it is
    due, how it is numbered and when a silent node's work moves on (config.SHARED): each look
    records this node's and compares them with the other live nodes'. A node whose settings differ
    is named in an ALERT with the settings, once until they change."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._told: dict[str, list[str]] = {}  # node name -> the settings it was named for

    def check(self, settings: dict[str, str]) -> dict[str, list[str]]:
        """Compare; the nodes newly found to differ, with the settings that differ."""
        differing = self.cluster.compare_settings(settings)
        new = {name: keys for name, keys in differing.items() if self._told.get(name) != keys}
        for name, keys in sorted(new.items()):
            log.error("ALERT cluster: node %s runs with other %s than this node (%s): give every node sharing "
                      "the registry the same values", name, ", ".join(keys), self.cluster.name)
        self._told = differing  # a node that agrees again is named again should it differ again
        return new


def due(registry: Store, job: str, slot: str) -> bool:
    """Whether a periodic job that has run on this registry before still has `slot` to do: the
    period it last ran for is an earlier one, or its run for `slot` never finished (its node
    stopped or died in it). A registry where it never ran has none due."""
    with registry.read() as conn:
        last = conn.execute(select(JobRun.slot, JobRun.finished_at).where(JobRun.job == job)).first()
    return last is not None and (last.slot < slot or (last.slot == slot and last.finished_at is None))


# -- what `gateway status` and the metrics show -------------------------------
def cluster_status(registry: Store, takeover_seconds: float) -> list[dict[str, Any]]:
    """Every node: its last heartbeat, whether it is alive, its claims, folders and running jobs."""
    with registry.session() as session:
        nodes = list(session.scalars(select(Node).order_by(Node.name)))
        runs = list(session.scalars(select(JobRun).order_by(JobRun.job)))
    with registry.read() as conn:
        now = lease_clock(conn)
        claims: dict[str, dict[str, int]] = {}
        for table, kind in ((OutboxMail, "outbox"), (OcrJob, "ocr")):
            for holder, count in conn.execute(select(table.claimed_by, func.count())
                                              .where(table.claimed_by.is_not(None), table.lease_until > now)
                                              .group_by(table.claimed_by)):
                claims.setdefault(str(holder), {"outbox": 0, "ocr": 0})[kind] = int(count)
        folders: dict[str, list[str]] = {}
        for name, holder in conn.execute(select(Lease.name, Lease.holder).where(Lease.expires_at > now)
                                         .order_by(Lease.name)):
            folders.setdefault(holder, []).append(name.removeprefix("imap:"))
    jobs: dict[str, list[str]] = {}
    for run in runs:
        if run.finished_at is None:
            jobs.setdefault(run.node, []).append(run.job)
    takeover = timedelta(seconds=takeover_seconds)
    result = []
    for node in nodes:
        alive = node.stopped_at is None and now - node.heartbeat_at < takeover
        held = claims.get(node.instance, {"outbox": 0, "ocr": 0}) if alive else {"outbox": 0, "ocr": 0}
        result.append({
            "name": node.name, "instance": node.instance, "host": node.host, "pid": node.pid,
            "started_at": node.started_at, "heartbeat_at": node.heartbeat_at,
            "heartbeat_age_seconds": round((now - node.heartbeat_at).total_seconds(), 1),
            "state": "stopped" if node.stopped_at is not None else "alive" if alive else "silent",
            "claims": held, "folders": folders.get(node.instance, []) if alive else [],
            "jobs": jobs.get(node.instance, []) if alive else [],
            "last_jobs": {r.job: {"slot": r.slot, "finished_at": r.finished_at, "outcome": r.outcome}
                          for r in runs if r.node == node.instance},
        })
    return result

