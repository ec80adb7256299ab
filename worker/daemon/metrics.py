"""Prometheus metrics of the daemon, in a registry of its own (nothing global, tests stay apart).

Every label has a small fixed set of values: HTTP method, route template, status, change kind,
pass result, thread state, edit state, job name. Thread ids never become labels.

Counters are fed by events (the client's :class:`ClientEvents` hooks, the sync engine's per-thread
outcomes); gauges that need the database (threads by state, outbox edits) are refreshed by the
heartbeat in a worker thread, so a scrape never touches the database or blocks the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from worker.client import ClientEvents
from worker.daemon.freshness import Lag
from worker.sync.outcome import ThreadOutcome

# The thread-state counts read every row of ``tracked_thread`` and ``sync_state``: 1.15 s of the
# server per read at a million threads (bench_freshness), a tenth of a core at every heartbeat.
# So they wait 50 times what their last read took before the next (2% of a server core at most,
# whatever the mirror's size): every heartbeat for a small mirror, about a minute for a million.
THREAD_COUNTS_COST_RATIO = 50.0
PASS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
EDIT_STATES = ("pending", "conflicted", "failed")


class DaemonMetrics:
    """The daemon's metric families; ``render()`` is the ``/metrics`` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Labelled children looked up once per label values: ``labels()`` validates, converts
        # and locks on every call, and the per-request and per-pass counters are hit ~50 times
        # a second (a child, once made, stays in its family: nothing here removes one).
        self._passes: dict[str, Counter] = {}
        self._requests: dict[tuple[str, str, int | None], Counter] = {}
        self.requests = Counter(
            "threadsync_requests",
            "API requests by method, route template and HTTP status (status 'none': no answer).",
            ["method", "route", "status"],
            registry=r,
        )
        self.retries = Counter(
            "threadsync_retries", "Requests sent again after a failure.", ["route"], registry=r
        )
        self.throttled = Counter(
            "threadsync_throttled", "429 answers (each pauses every caller).", registry=r
        )
        self.messages = Counter(
            "threadsync_messages_mirrored",
            "Message changes written to the mirror.",
            ["change"],
            registry=r,
        )
        self.passes = Counter(
            "threadsync_thread_passes", "Thread sync passes by result.", ["result"], registry=r
        )
        self.pass_seconds = Histogram(
            "threadsync_thread_sync_duration_seconds",
            "Wall time of one thread's sync pass.",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.dispatches = Counter(
            "threadsync_dispatch_cycles", "Dispatcher runs that claimed work.", registry=r
        )
        self.jobs = Counter(
            "threadsync_job_runs",
            "Scheduled job runs by job and outcome.",
            ["job", "outcome"],
            registry=r,
        )
        self.threads = Gauge(
            "threadsync_threads", "Tracked threads by state.", ["state"], registry=r
        )
        self.edits = Gauge(
            "threadsync_edits", "Outbox metadata edits by state.", ["state"], registry=r
        )
        self.last_success = Gauge(
            "threadsync_last_successful_pass_timestamp_seconds",
            "Unix time of the last thread pass that succeeded.",
            registry=r,
        )
        self.heartbeat = Gauge(
            "threadsync_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat written to the mirror.",
            registry=r,
        )
        self.tokens = Counter(
            "threadsync_entra_tokens",
            "Entra token events (auth = entra): renewed, failed (a renewal), refused (a 401).",
            ["outcome"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "threadsync_entra_token_expiry_timestamp_seconds",
            "Unix time the Entra token in use expires (auth = entra).",
            registry=r,
        )
        self.recent_threads = Gauge(
            "threadsync_recently_changed_threads",
            "Active threads a pass found changed in the last hour.",
            registry=r,
        )
        self.staleness = Gauge(
            "threadsync_recent_staleness_seconds",
            "Seconds since the last successful check of the recently changed threads, by"
            " quantile (0.5, 0.99, 1 = max).",
            ["quantile"],
            registry=r,
        )
        self.budget = Gauge(
            "threadsync_request_budget_per_second",
            "daemon.max_requests_per_second: the rate every request of the daemon shares.",
            registry=r,
        )
        self.claim_size = Gauge(
            "threadsync_claim_size",
            "Due threads the next dispatch claims (from the budget and requests per pass).",
            registry=r,
        )
        self._replica_metrics(r)
        for state in EDIT_STATES:
            self.edits.labels(state=state).set(0)
        for change in ("added", "changed", "deleted", "restored"):
            self.messages.labels(change=change)

    def _replica_metrics(self, r: CollectorRegistry) -> None:
        """Replicas mode (issue 21); each replica serves its own, so no replica label but one."""
        self.replica = Gauge(
            "threadsync_replica_info",
            "This daemon's replica id (replicas mode).",
            ["replica"],
            registry=r,
        )
        self.leases_held = Gauge(
            "threadsync_leases_held", "Thread and job leases this replica holds now.", registry=r
        )
        self.lease_claims = Counter(
            "threadsync_lease_claims", "Thread leases claimed by this replica.", registry=r
        )
        self.lease_renewals = Counter(
            "threadsync_lease_renewals", "Bulk lease renewal rounds that succeeded.", registry=r
        )
        self.leases_lost = Counter(
            "threadsync_leases_lost",
            "Leases found taken over by another replica (a renewal or a fenced write).",
            registry=r,
        )
        self.lease_takeovers = Counter(
            "threadsync_lease_takeovers",
            "Threads claimed from another replica whose lease had expired.",
            registry=r,
        )

    def record_outcome(self, outcome: ThreadOutcome) -> None:
        """One thread pass finished (the sync runner's ``on_thread_done``)."""
        passes = self._passes.get(outcome.result)
        if passes is None:
            passes = self._passes[outcome.result] = self.passes.labels(result=outcome.result)
        passes.inc()
        self.pass_seconds.observe(outcome.seconds)
        c = outcome.counts
        if c.writes:
            for change, n in (
                ("added", c.added),
                ("changed", c.changed),
                ("deleted", c.deleted),
                ("restored", c.restored),
            ):
                if n:
                    self.messages.labels(change=change).inc(n)
        if outcome.ok:
            self.last_success.set(time.time())

    def count_request(self, method: str, route: str, status: int | None) -> None:
        """One API request answered (``status``) or not (None)."""
        key = (method, route, status)
        child = self._requests.get(key)
        if child is None:
            status_label = "none" if status is None else str(status)
            child = self.requests.labels(method=method, route=route, status=status_label)
            self._requests[key] = child
        child.inc()

    def set_threads(self, counts: dict[str, int]) -> None:
        for state, n in counts.items():
            self.threads.labels(state=state).set(n)

    def set_lag(self, lag: Lag) -> None:
        self.recent_threads.set(lag.threads)
        for quantile, value in (("0.5", lag.p50), ("0.99", lag.p99), ("1", lag.max)):
            self.staleness.labels(quantile=quantile).set(value)

    def set_edits(self, counts: dict[str, int]) -> None:
        for state in EDIT_STATES:
            self.edits.labels(state=state).set(counts.get(state, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def client_events(self) -> MetricsEvents:
        return MetricsEvents(self)


class Refresh:
    """When a gauge whose query grows with the mirror is read again: at once the first time,
    then no sooner than ``ratio`` times what its last read took, after that read ended."""

    def __init__(self, ratio: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio, self.clock = ratio, clock
        self._next: float | None = None

    def due(self) -> bool:
        return self._next is None or self.clock() >= self._next

    def took(self, seconds: float) -> None:
        """A read just ended that took ``seconds``."""
        self._next = self.clock() + self.ratio * seconds


class MetricsEvents(ClientEvents):
    """The API client's hooks, counted."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self._m = metrics

    def on_response(self, method: str, route: str, status: int | None, seconds: float) -> None:
        self._m.count_request(method, route, status)

    def on_retry(self, route: str, status: int | None, wait: float) -> None:
        self._m.retries.labels(route=route).inc()

    def on_throttled(self, wait: float) -> None:
        self._m.throttled.inc()

    def on_token(self, outcome: str, expires_on: float | None) -> None:
        self._m.tokens.labels(outcome=outcome).inc()
        if expires_on is not None:
            self._m.token_expiry.set(expires_on)
