"""The long-running `threadsync run`: scheduling, pacing, lifecycle, health and metrics.

Map: ``due`` (which threads are due, leases and the next time: pure maths plus batched queries),
``dispatcher`` (syncs the due threads in batches and reschedules them), ``jobs`` (the job bodies:
dispatch, reconcile, push, backup, and the runner that cancels them cleanly), ``scheduler`` (the
only module that imports APScheduler), ``heartbeat`` (the liveness record `threadsync check`
reads), ``freshness`` (the adaptive per-thread interval and the claim size planned from the request
budget: pure maths), ``lag`` (staleness of the recently changed threads), ``lock`` (one daemon per
mirror), ``metrics`` (Prometheus), ``health`` (the HTTP listener), ``lifecycle`` (signals, start-up
and graceful shutdown). Replicas mode (several daemons on one PostgreSQL mirror): ``replicas``
(identity, registry, bulk lease renewal), ``fence`` (the lease check inside every page write),
``slots`` (periodic jobs once per slot across replicas).
"""
