"""`gateway run`: workers on the spool, ZeroMQ, periodic jobs, systemd integration."""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gateway.stages import rulebook, tokens
from gateway import logs, running, storage
from gateway.config import RESTART_ONLY, Config, ConfigError, shared_settings
from gateway.adapters.fax_drop import FaxDropWatcher
from gateway.adapters.imap import ImapIntake
from gateway.adapters.smtp import SmtpIntake
from gateway.daemon.events import EventPublisher
from gateway.stages.fax.text import TextReader
from gateway.outbound.sender import OutboxSender
from gateway.daemon.pipeline import Outcome, Pipeline
from gateway.daemon.registrar import Registrar
from gateway.report.metrics import MetricsServer
from gateway.registry import Registry, RegistryUnavailable
from gateway.registry import schema
from gateway.registry.leases import Cluster, JobStopped, NodeConflict, RulesWatch, SettingsWatch, Skipped, due
from gateway.registry.ledger import ImapLedger
from gateway.registry.schema import SchemaMismatch
from gateway.daemon.sdnotify import Notifier
from gateway.daemon.workers import SpoolWorker
from gateway.spool import Spool

if TYPE_CHECKING:
    from gateway.web.server import WebServer

log = logging.getLogger("gateway.daemon")
# What a job told to stop past the grace has to end by itself: the archive looks between letters,
# the reminders' pass between reminders.
_JOBS_STOPPING_SECONDS = 2.0


class AlreadyRunning(Exception):
    pass


class PidLock:
    """One daemon per state directory; the lock dies with the process."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self._fd, 32, 0).decode(errors="replace").strip()
            os.close(self._fd)
            raise AlreadyRunning(f"another gateway daemon (pid {other or '?'}) runs on {path.parent.parent}") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)


class Daemon:
    def __init__(self, config: Config, config_arg: str | None = None):
        self.config = config
        self._config_arg = config_arg
        self.notifier = Notifier()
        self.store_error: str | None = None
        # Why the last reload was refused, said in every STATUS= until one is taken: the rescan's
        # would otherwise hide it.
        self._reload_refused: str | None = None
        try:
            storage.mount(config)  # before the spool makes a local store of its own
        except storage.StorageError as exc:
            self.store_error = str(exc)
        self.spool = Spool(config.spool_dir, config.message_dir, max_attempts=config.model.spool.max_attempts)
        self.registry = Registry.from_config(config)
        self.totals: Counter[str] = Counter()
        self._workers: list[SpoolWorker] = []
        self._jobs_running: set[asyncio.Task[Any]] = set()
        # Set once the stop's grace is over: the jobs that can stop halfway (the archive at its next
        # letter, the reminders' pass at its next reminder) stop then, and their next run does the rest.
        self._jobs_cut_short = threading.Event()
        self._archiving = asyncio.Lock()
        self._totals_lock = threading.Lock()
        self._stop: asyncio.Event | None = None
        self.publisher: EventPublisher | None = None
        self.pipeline: Pipeline | None = None
        self.registrar: Registrar | None = None
        self.smtp: SmtpIntake | None = None
        self.imap: ImapIntake | None = None
        self.fax_drop: FaxDropWatcher | None = None
        self.text_reader: TextReader | None = None
        self.outbox: OutboxSender | None = None
        self.metrics: MetricsServer | None = None
        self.web: WebServer | None = None
        self.cluster: Cluster | None = None

    # -- life cycle -----------------------------------------------------
    def run(self) -> int:
        try:
            return asyncio.run(self._main())
        except AlreadyRunning as exc:
            log.error("%s", exc)
            return 1

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

        pidlock = PidLock(self.config.run_dir / "gateway.pid")
        self._publish()
        if self.store_error is not None:
            log.error("cannot start: %s", self.store_error)
            pidlock.release()
            return 1
        self.notifier.status("starting: opening the registry")
        try:
            if not await self._wait_for_registry():
                pidlock.release()
                return 0
        except SchemaMismatch as exc:
            log.error("cannot start: registry %s: %s", self.registry.safe_url, exc)
            pidlock.release()
            return 1
        settings = self.config.model.cluster
        self.cluster = Cluster(self.registry, self.config.node_name, takeover_seconds=settings.takeover_seconds,
                               max_claims=settings.max_claims)
        try:
            freed = await asyncio.to_thread(self.cluster.join)
        except (NodeConflict, RegistryUnavailable) as exc:
            log.error("cannot start: %s", exc)
            pidlock.release()
            return 1
        if freed:
            log.info("node %s: %d claim(s) of its previous run handed back", self.cluster.name, freed)
        # A run taken for dead whose name was started again (elsewhere) stops: the other run does
        # its work now, and two runs of one name would each take the other's claims for their own.
        stop = self._stop

        def displaced() -> None:
            loop.call_soon_threadsafe(stop.set)
        self.cluster.on_displaced(displaced)
        self.cluster.start()

        try:
            # Created at first start; a damaged file stops the start here, naming it, instead of
            # failing every notification and answer later.
            await asyncio.to_thread(tokens.keyring, self.config)
        except (tokens.KeyFileError, OSError) as exc:
            log.error("cannot start: the reply keys: %s", exc)
            pidlock.release()
            return 1

        self.notifier.status("starting: recovering the spool")
        requeued, quarantined = await asyncio.to_thread(self.spool.recover)
        if requeued or quarantined:
            log.warning("recovered %d interrupted item(s), quarantined %d", requeued, quarantined)

        context = zmq.asyncio.Context()
        sync_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(context)
        try:
            self.publisher = EventPublisher(sync_context,
                                            self.config.endpoint(self.config.model.daemon.events_endpoint),
                                            self.config.model.daemon.events_hwm)
            wakeup = context.socket(zmq.PULL)
            wakeup.setsockopt(zmq.LINGER, 0)
            wakeup.bind(self.config.endpoint(self.config.model.daemon.wakeup_endpoint))
        except zmq.ZMQError as exc:
            log.error("cannot bind ZeroMQ endpoint: %s", exc)
            pidlock.release()
            return 1
        self.outbox = OutboxSender(self.config, self.registry)
        publisher, outbox = self.publisher, self.outbox

        def publish(topic: str, body: dict[str, Any]) -> None:
            # Every intake's registrations pass here (SMTP's, the workers', the helper's).
            with self._totals_lock:
                self.totals[topic.rpartition(".")[2]] += 1
            publisher.publish(topic, body)
            if topic == "letter.registered":
                outbox.wake()  # a routed letter has mail waiting
                if body.get("channel") == "fax" and self.text_reader is not None:
                    self.text_reader.wake()  # its text is to be read: no wait for the next poll

        self.pipeline = Pipeline(self.config, self.spool, self.registry, publish)
        listening = ""
        if self.config.model.smtp.enabled or self.config.model.imap.accounts:
            self.notifier.status("starting: the registrar")
            self.registrar = Registrar(self.pipeline, self.config.model.spool.batch_size,
                                       large_item_bytes=self.config.model.spool.large_item_bytes,
                                       large_item_idle_seconds=self.config.model.spool.large_item_idle_seconds,
                                       spool_lanes=self.config.model.spool.registrars)
            await asyncio.to_thread(self.registrar.wait_ready)
        if self.config.model.smtp.enabled:
            assert self.registrar is not None
            try:
                self.smtp = SmtpIntake(self.config, self.spool, self.registrar)
                listening = ", SMTP on " + ", ".join(await self.smtp.start())
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.error("cannot start the SMTP listener: %s", exc)
                self.registrar.close()
                self.publisher.close()
                pidlock.release()
                return 1

        if self.config.model.imap.accounts:
            # Folders are leased only where several nodes can share the registry: a SQLite registry
            # is one node's, and its folders are never contested (nor held up by a full disk).
            leases = self.cluster if self.cluster is not None and self.cluster.postgres else None
            self.imap = ImapIntake(self.config, self.spool, ImapLedger(self.registry), self.wake, cluster=leases)
            listening += ", IMAP " + ", ".join(self.imap.start())
        if self.config.model.fax.enabled:
            self.fax_drop = FaxDropWatcher(self.config, self.spool, self.wake)
            self.fax_drop.start()
            listening += f", fax drop folder {self.config.fax_drop_dir}"
        self.text_reader = TextReader(self.config, self.registry, on_routed=self.outbox.wake)
        self.text_reader.start()
        self.outbox.start()
        rules = self.config.ruleset
        log.info("rules: %d from %s (version %s)", len(rules), rules.file, rules.version)
        if self.config.model.metrics.enabled:
            metrics = MetricsServer(self.config.model.metrics.listen, self.registry, self.spool, self._totals)
            try:
                listening += f", metrics on {metrics.start()}"
                self.metrics = metrics
            except OSError as exc:  # intake matters more than monitoring: go on without it
                log.error("ALERT cannot serve metrics on %s: %s", self.config.model.metrics.listen, exc)
        if self.config.model.web.enabled:
            listening += await asyncio.to_thread(self._start_web)
        self._start_workers()
        threading.Thread(target=self._index_older_letters, name="search-index", daemon=True).start()
        scheduler = AsyncIOScheduler()
        scheduler.add_job(self._job("spool rescan", self._rescan), "interval", id="spool-rescan",
                          seconds=self.config.model.spool.rescan_seconds, max_instances=1, coalesce=True)
        if self.config.model.archive.enabled:
            archive = self.config.model.archive
            scheduler.add_job(self._job("archive", self._archive_last_month), "cron", id="archive",
                              day=archive.run_day, hour=archive.run_hour, timezone=self.config.model.gateway.timezone,
                              max_instances=1, coalesce=True, misfire_grace_time=24 * 3600)
            # At the start, and then as often as a node takes over what another held: last month's
            # archive missed while every node was down, or left unfinished by a node that stopped
            # or died in it. Two instances: while one archives, the next look finds the run under way
            # and returns at once, where the scheduler would warn of a skipped run every period.
            scheduler.add_job(self._job("archive", self._archive_if_missed), "interval", id="archive-missed",
                              seconds=self.config.model.cluster.takeover_seconds, max_instances=2, coalesce=True,
                              next_run_time=datetime.now(timezone.utc))
        if self.cluster.postgres:  # several nodes may share the registry: each must run the same rules
            watch = RulesWatch(self.registry, grace_seconds=self.config.model.cluster.takeover_seconds)
            scheduler.add_job(self._job("rules", partial(self._compare_rules, watch)), "interval", id="rules",
                              seconds=self.config.model.cluster.takeover_seconds, max_instances=1, coalesce=True,
                              next_run_time=datetime.now(timezone.utc))
            # And the settings that must agree between nodes (the departments, the takeover time, ...).
            agreed = SettingsWatch(self.cluster)
            scheduler.add_job(self._job("settings", partial(self._compare_settings, agreed)), "interval",
                              id="settings", seconds=self.config.model.cluster.takeover_seconds, max_instances=1,
                              coalesce=True, next_run_time=datetime.now(timezone.utc))
        if self.config.model.reminders.enabled:
            scheduler.add_job(self._job("reminders", self._remind), "interval", id="reminders",
                              minutes=self.config.model.reminders.check_minutes, max_instances=1, coalesce=True,
                              next_run_time=datetime.now(timezone.utc))
        scheduler.start()
        tasks = [asyncio.create_task(self._listen(wakeup))]
        interval = self.notifier.watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(self._watchdog(interval)))

        waiting = len(self.spool.pending())
        log.info("gateway ready: registry %s, state in %s, %d item(s) waiting, %d worker(s)%s",
                 self.registry.safe_url, self.config.state_dir, waiting, len(self._workers), listening)
        self.notifier.ready(f"ready: {waiting} waiting, {len(self.spool.quarantined())} quarantined")

        await self._stop.wait()

        self.notifier.stopping("stopping: finishing items in progress")
        log.info("stopping: letting in-flight items finish")
        scheduler.pause()  # no job starts any more; those running are waited for below
        # The jobs run on while intake stops: their grace counts from here, so that the stop as a
        # whole stays within systemd's TimeoutStopSec.
        jobs_deadline = time.monotonic() + self.config.model.daemon.shutdown_grace_seconds
        asyncio.get_running_loop().call_later(self.config.model.daemon.shutdown_grace_seconds,
                                              self._jobs_cut_short.set)
        if self.imap is not None:
            self.imap.stop_soon()  # each watcher finishes its batch while the SMTP sessions end
        if self.smtp is not None:
            # No new sessions; transactions in DATA finish their reply, idle sessions get 421.
            await self.smtp.stop(self.config.model.daemon.shutdown_grace_seconds)
        if self.imap is not None:
            # Within the same grace, not a wait of its own after SMTP's: the stop as a whole must end
            # before systemd's TimeoutStopSec kills it, and with it the hand-back of every claim.
            await asyncio.to_thread(self.imap.stop, max(0.0, jobs_deadline - time.monotonic()))
        # The rest within the same grace too: a delivery to a relay that does not answer would
        # otherwise hold the stop for its whole timeout (a minute), past TimeoutStopSec, and the
        # kill would take the claims' hand-back with it. What is still under way is left to end
        # with the process and is done again: a fax file stays in its folder, a text read is
        # read at the next start, a delivery's mail stays claimed until its claim expires.
        for runner in (self.fax_drop, self.text_reader, self.outbox):
            if runner is not None:
                runner.stop(0)  # all told at once
        for runner in (self.fax_drop, self.text_reader, self.outbox):
            if runner is not None:
                await asyncio.to_thread(runner.stop, max(0.0, jobs_deadline - time.monotonic()))
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        if self.web is not None:
            await asyncio.to_thread(self.web.stop)
        await self._jobs_finished(jobs_deadline)
        scheduler.shutdown(wait=False)
        # What this node held (folders, claimed mail and OCR jobs) goes to the others now; but
        # not mail a delivery that outlasted the wait may still be handing to its relay.
        sending = self.outbox is not None and self.outbox.alive()
        if sending:
            log.warning("outbox: a delivery is still under way; its mail is left claimed until its claim expires")
        await asyncio.to_thread(self.cluster.stop, sending=sending)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self._stop_workers)
        if self.registrar is not None:
            await asyncio.to_thread(self.registrar.close)
        wakeup.close(0)
        self.publisher.close()
        context.term()
        self.registry.close()
        log.info("stopped: %s", self._summary())
        pidlock.release()
        return 0

    def _start_web(self) -> str:
        """The web register, served from a thread of the daemon; like metrics, it is not worth
        refusing mail for, so a port that cannot be had is an alert, not a failed start."""
        from gateway.services.people import People
        from gateway.web.server import WebServer

        listen = self.config.model.web.listen
        web = WebServer(self.config, listen)
        try:
            address = web.start()
        except (OSError, RuntimeError) as exc:
            log.error("ALERT cannot serve the web register on %s: %s", listen, exc)
            return ""
        self.web = web
        if People(self.config, self.registry).count() == 0:
            log.warning("the web register has no people yet: create the first administrator with "
                        "`gateway users add NAME --role admin --email ADDRESS`, then sign in at http://%s/",
                        address)
        return f", web register on http://{address}/"

    async def _wait_for_registry(self) -> bool:
        assert self._stop is not None
        delay = 1.0
        while not self._stop.is_set():
            try:
                if await asyncio.to_thread(self.registry.check_schema):
                    log.info("registry set up (schema %s)", schema.HEAD)
                return True
            except RegistryUnavailable as exc:
                log.error("registry unavailable, retrying in %.0f s: %s", delay, exc)
                self.notifier.status(f"waiting for the registry: {exc}")
                # Waiting for the database is start-up, not a hang: ask systemd for time.
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int((delay + 30) * 1e6)}")
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 60.0)
        return False

    def _index_older_letters(self) -> None:
        """Letters registered before the search index existed are indexed once, in the background:
        a large register must not hold up the start (new letters are indexed as they register)."""
        from gateway.services.queries import reindex_missing

        try:
            done = reindex_missing(self.registry)
        except RegistryUnavailable as exc:
            log.warning("search index: older letters not indexed yet (%s); next start tries again", exc)
            return
        if done:
            log.info("search index: %d older letter(s) indexed", done)

    # -- workers --------------------------------------------------------
    def _start_workers(self) -> None:
        assert self.pipeline is not None
        for n in range(self.config.model.spool.workers):
            worker = SpoolWorker(n, self.config, self.spool, self.pipeline, self.registrar, self._count)
            worker.start()
            self._workers.append(worker)

    def _stop_workers(self) -> None:
        grace = self.config.model.daemon.shutdown_grace_seconds
        deadline = time.monotonic() + grace
        if self.cluster is not None and self.cluster.displaced.is_set():
            # This node's name runs elsewhere now, and a start here is refused while that run
            # lives: what this spool holds (acknowledged to its senders) is registered before the
            # stop, not left waiting for that start. Intake has stopped: the spool only drains.
            while (self.spool.pending() or self.spool.claimed()) and time.monotonic() < deadline:
                self.wake()
                time.sleep(0.2)
        for worker in self._workers:
            worker.stop(0)  # all told at once; then each waited for within the one grace period
        for worker in self._workers:
            worker.stop(max(0.0, deadline - time.monotonic()))
        if any(w.alive() for w in self._workers):
            # Claimed items stay in work/; their locks die with us and the next start recovers them.
            log.warning("workers still busy after %.0f s; their items will be recovered at next start", grace)

    def wake(self) -> None:
        for worker in self._workers:
            worker.wake()

    def _count(self, outcomes: list[Outcome]) -> None:
        with self._totals_lock:  # the rest is counted as it is published
            self.totals.update(o.result for o in outcomes if o.result in ("retry", "released"))

    def _totals(self) -> Counter[str]:
        with self._totals_lock:
            return Counter(self.totals)

    def _summary(self) -> str:
        with self._totals_lock:
            return ", ".join(f"{v} {k}" for k, v in sorted(self.totals.items())) or "nothing processed"

    # -- periodic and signalled jobs -----------------------------------
    def _job(self, name: str, run: Callable[[], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
        """A scheduled job that the stop can wait for. The scheduler's own shutdown cancels the
        jobs it is running, and logs each as an error with a traceback; a job's thread (a rescan, an
        archive run) would go on working while the registry closes beneath it."""
        async def job() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._jobs_running.add(task)
            try:
                await run()
            except asyncio.CancelledError:
                # Only the stop cancels a job, once its grace is over: every job's steps are
                # durable, and what it left is done again by its next run.
                log.warning("stopping: %s cut short; it runs again after the next start", name)
            finally:
                self._jobs_running.discard(task)
        return job

    async def _jobs_finished(self, deadline: float) -> None:
        if not self._jobs_running:
            return
        # Past the deadline, a job that can stop halfway has been told to (_jobs_cut_short): a
        # moment more lets it reach its next step and end by itself.
        _, late = await asyncio.wait(set(self._jobs_running),
                                     timeout=max(0.0, deadline - time.monotonic()) + _JOBS_STOPPING_SECONDS)
        if late:
            log.warning("stopping: %d scheduled job(s) still running after the grace of %.0f s", len(late),
                        self.config.model.daemon.shutdown_grace_seconds)

    async def _rescan(self) -> None:
        requeued, quarantined = await asyncio.to_thread(self.spool.recover)
        if requeued or quarantined:
            log.warning("rescan: requeued %d abandoned item(s), quarantined %d", requeued, quarantined)
        self.wake()
        self.notifier.status(f"running: {self._summary()}; {len(self.spool.pending())} waiting"
                             + (f"; last reload refused: {self._reload_refused}" if self._reload_refused else ""))

    async def _archive_last_month(self, *, missed: bool = False) -> None:
        from zoneinfo import ZoneInfo

        from gateway.archive.packer import ArchiveError, Archiver, log_checked

        if self._archiving.locked():
            return  # the run on its day and the look for a missed one: this node runs one at a time
        month = _month_before(datetime.now(ZoneInfo(self.config.model.gateway.timezone)))
        archiver = Archiver(self.config, self.registry, stop=self._jobs_cut_short)
        assert self.cluster is not None

        def archive() -> tuple[list[Any], list[Any]]:
            if missed:
                log.info("archive of %s: due and not done (missed, or left unfinished by a node that stopped or "
                         "died in it): running it now", month)
            # Earlier months first, each with what it still lacks: otherwise a letter registered
            # after its month's run would stay out of every package.
            # And a month whose run packed and stopped before verifying (killed, a power cut): nothing
            # of it is left to pack, but its package is checked (and copied) only now.
            unverified = self.registry.unverified_months(month)
            for behind in sorted({*archiver.months_behind(month), *unverified}):
                try:
                    late = archiver.run(behind)
                    checked = archiver.verify(behind) if late or behind in unverified else []
                except JobStopped:
                    raise
                # An original that cannot be packed, or a folder of that month that cannot be
                # written (read-only, full): last month's run goes ahead all the same.
                except (ArchiveError, OSError) as exc:
                    log.error("ALERT archive of %s (letters left out of its run) failed: %s", behind, exc)
                    continue
                log.info("archive of %s: %d letter(s) left out of its run packed now (registered late, or the "
                         "month never run), and %d reply(ies) or circulation(s) after their letter was packed, in "
                         "%d package(s); %d verified, %d failed", behind, sum(w.letters for w in late),
                         sum(w.items for w in late), len(late), sum(c.ok for c in checked),
                         sum(not c.ok for c in checked))
                log_checked(checked)
            return archiver.run(month), archiver.verify(month)
        try:
            async with self._archiving:
                # Once across the nodes: the others skip it, quietly.
                done = await asyncio.to_thread(self.cluster.once, "archive", month, archive)
        except JobStopped:
            log.warning("stopping: archive of %s cut short past the grace; it runs again after the next start",
                        month)
            return
        except Exception as exc:
            log.error("ALERT archive of %s failed: %s", month, exc)
            return
        if isinstance(done, Skipped):
            # Looking for a missed run while another node does it: every takeover period, so quietly.
            log.log(logging.DEBUG if missed else logging.INFO, "archive of %s: not run on this node (%s)", month,
                    done.reason)
            return
        written, checked = done
        bad = [c for c in checked if not c.ok]
        log.info("archive of %s: %d package(s) written, %d letter(s); %d verified, %d failed", month, len(written),
                 sum(w.letters for w in written), len(checked) - len(bad), len(bad))
        log_checked(checked)

    async def _archive_if_missed(self) -> None:
        """Runs last month's archive if it was due on this month's run day and no node has done it
        (all of them down at the time, or the one running it stopped or died in it). Only once an
        archive has run on this registry: a new one has none due."""
        from zoneinfo import ZoneInfo

        settings = self.config.model.archive
        now = datetime.now(ZoneInfo(self.config.model.gateway.timezone))
        if (now.day, now.hour) < (settings.run_day, settings.run_hour) or self._archiving.locked():
            return
        month = _month_before(now)
        try:
            missed = await asyncio.to_thread(due, self.registry, "archive", month)
        except RegistryUnavailable:
            return  # looked for again at the next period
        if missed:
            await self._archive_last_month(missed=True)

    async def _compare_rules(self, watch: RulesWatch) -> None:
        try:
            await asyncio.to_thread(watch.check, self.config.ruleset.version)
        except RegistryUnavailable:
            pass  # looked at again at the next period

    async def _compare_settings(self, watch: SettingsWatch) -> None:
        try:  # the running values: a reload changes some, others only a restart (see _running)
            await asyncio.to_thread(watch.check, shared_settings(self.config.model))
        except RegistryUnavailable:
            pass  # looked at again at the next period

    async def _remind(self) -> None:
        from gateway.track import reminders

        assert self.cluster is not None
        now = datetime.now(timezone.utc)
        # One pass per check interval across the nodes: the first node to reach it does it.
        slot = str(int(now.timestamp() // (self.config.model.reminders.check_minutes * 60)))
        try:
            done = await asyncio.to_thread(self.cluster.once, "reminders", slot,
                                           lambda: reminders.run(self.config, self.registry, now,
                                                                 stop=self._jobs_cut_short))
        except JobStopped:
            log.warning("stopping: reminders' pass cut short past the grace; the next pass sends the rest")
            return
        except RegistryUnavailable as exc:
            log.warning("reminders: registry unavailable: %s", exc)
            return
        except Exception:
            log.exception("reminders: unexpected error")
            return
        if isinstance(done, Skipped):
            log.debug("reminders: not run on this node (%s)", done.reason)
            return
        sent = done
        for reminder in sent:
            log.info("%s: %s to %s (reminder %d)", reminder.letter.number,
                     "escalation" if reminder.kind == "escalation" else f"reminder ({reminder.kind})",
                     ", ".join(m.recipient for m in reminder.mail), reminder.count)
        if sent and self.outbox is not None:
            self.outbox.wake()

    async def _listen(self, socket: Any) -> None:
        assert self.publisher is not None
        while True:
            frames = await socket.recv_multipart()
            if frames[0] == b"wake":
                self.wake()
                if self.outbox is not None:
                    self.outbox.wake()  # e.g. `gateway outbox retry`, a reassignment
            elif frames[0] == b"event" and len(frames) == 3:
                self.publisher.publish_frames(frames[1:])
            else:
                log.warning("ignored unknown message on the wake-up socket: %r", frames[0][:40])

    async def _watchdog(self, interval: float) -> None:
        while True:
            # Ping only while every worker is alive: a dead worker should get us restarted.
            if (all(w.alive() for w in self._workers) and (self.imap is None or self.imap.alive())
                    and (self.cluster is None or self.cluster.alive())
                    and all(c is None or c.alive() for c in (self.fax_drop, self.text_reader, self.outbox))):
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _publish(self, *, reloaded: bool = False, refused: list[str] | None = None) -> None:
        """Tell the commands what this daemon runs with and how its last reload went (`gateway status`)."""
        try:
            running.publish(self.config, reloaded=reloaded, refused=refused)
        except OSError as exc:  # never a reason to stop taking mail
            log.warning("cannot write %s: %s", self.config.run_dir / running.PUBLISHED, exc)

    def reload(self) -> None:
        """SIGHUP: read the file again and put it in force, or keep the running configuration. Whatever
        happens, systemd hears READY=1 after RELOADING=1 (it would otherwise wait for the reload's end)."""
        self.notifier.reloading()
        try:
            status = self._reload()
        except Exception as exc:  # a bug must not leave systemd waiting for the end of the reload
            log.exception("reload refused, previous configuration stays in force: %s", exc)
            status = self._refuse([f"{type(exc).__name__}: {exc}"], f"{type(exc).__name__}: {exc}")
        self.notifier.notify("READY=1", f"STATUS={status}")

    def _refuse(self, reasons: list[str], summary: str) -> str:
        """Record a refused reload (`gateway status`, the operations page, each STATUS=): its STATUS=."""
        self._publish(refused=reasons)
        self._reload_refused = summary
        return f"running (reload refused: {summary})"

    def _reload(self) -> str:
        try:
            new = rulebook.load(self._config_arg)
        except ConfigError as exc:
            log.error("reload refused, previous configuration stays in force: %s",
                      "; ".join(str(i) for i in exc.issues))
            return self._refuse([str(i) for i in exc.issues], "configuration invalid")
        new, restart_needed = _running(self.config, new)
        old = self.config
        try:
            self._apply(new)
        except Exception as exc:
            log.exception("reload refused, previous configuration stays in force: applying it failed: %s", exc)
            # Parts that took the new one go back to the old: one configuration in force, never half of each.
            try:
                self._apply(old)
            except Exception:
                log.exception("reload: putting the previous configuration back failed too")
            return self._refuse([f"applying it failed: {type(exc).__name__}: {exc}"],
                                f"applying it failed: {type(exc).__name__}: {exc}")
        self._publish(reloaded=True)
        self._reload_refused = None
        log.info("configuration reloaded from %s, %d rule(s) from %s (version %s)%s", new.path,
                 len(new.ruleset), new.ruleset.file, new.ruleset.version,
                 f" ({', '.join(restart_needed)} changed: takes effect at restart)" if restart_needed else "")
        return "running (configuration reloaded)"

    def _apply(self, config: Config) -> None:
        """Hand `config` to every running part."""
        self.config = config
        if self.pipeline is not None:
            self.pipeline.config = config
        if self.smtp is not None:
            self.smtp.reload(config)
        if self.imap is not None:
            self.imap.reload(config)
        if self.web is not None:
            self.web.reload(config)
        # Each takes what it can at its next pass: the fax drop its patterns and timings (another folder
        # needs a restart), the text reader its languages and time allowed (the pool size needs a restart).
        for runner in (self.fax_drop, self.text_reader, self.outbox, *self._workers):
            if runner is not None:
                runner.reload(config)
        logs.setup(config.model.logging.level, timestamps=config.model.logging.timestamps)


def _month_before(now: datetime) -> str:
    """The month the archive run of `now`'s month archives (YYYY-MM)."""
    return f"{now.year - (now.month == 1)}-{(now.month - 2) % 12 + 1:02d}"


def _running(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The configuration a reload puts in force: `new`, with the values of `old` (the running
    ones) for what only a restart changes, so that nothing reading the configuration later acts
    on a value not in effect; and the names of those that differ (they take effect at restart)."""
    sections: dict[str, Any] = {}
    changed = []
    for name, section, keys in RESTART_ONLY:
        was, wanted = getattr(old.model, section), getattr(new.model, section)
        if keys is None:
            differs = was != wanted
            sections[section] = was
        else:
            differs = any(getattr(was, key) != getattr(wanted, key) for key in keys)
            kept = {key: getattr(was, key) for key in keys}
            sections[section] = sections.get(section, wanted).model_copy(update=kept)
        if differs:
            changed.append(name)
    model = new.model.model_copy(update=sections)
    return Config(path=new.path, state_dir=old.state_dir, rules=new.rules, model=model), changed
