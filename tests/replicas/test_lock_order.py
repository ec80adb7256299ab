"""Replicas mode's lock order (``worker/daemon/slots.py``) under the interleaving that broke it.

Three transactions of one replica meet on PostgreSQL: a page write (its threads' advisory locks,
then ``check_lease`` on the thread row), the lease renewal (``renew_threads`` on the thread rows,
then ``renew_jobs`` on the ``job_slot`` row) and a push recording a modify's answer under its slot
guard (``store_outcomes``). Recording the guard's ``job_slot`` row before the thread's advisory
lock closed a cycle: the store waits on the page, the page on the renewal, the renewal on the
store, and PostgreSQL aborted one of them (DeadlockDetected). Threads and events order the steps;
the one wait PostgreSQL alone can tell (the store blocked behind the page) is read from
``pg_blocking_pids``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import text

from tests.outbox.conftest import make_world
from tests.replicas.test_slot_fence import slot_fence
from worker.daemon.fence import check_lease
from worker.daemon.replicas import renew_jobs, renew_threads
from worker.daemon.slots import SlotFence
from worker.outbox import set_metadata, show_metadata
from worker.outbox.record import Outcome, load_open, store_outcomes
from worker.store.db import Mirror, lock_threads

pytestmark = pytest.mark.anyio

OWNER = "r1"
TTL = 60.0
WAIT = 30.0  # a bound on each step's wait for the others (they take milliseconds)


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state only PostgreSQL can report (a backend blocked on a lock)."""
    pause = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_push_record_page_write_and_renewal_do_not_deadlock(pg: Mirror) -> None:
    world = await make_world(pg, threads=1, messages=1)
    (thread,) = world.thread_ids
    (msg,) = world.messages(thread)
    set_metadata(pg, thread, msg["id"], set={"label": "refund"})
    (snap,) = load_open(pg, retry_failed=False)
    answer = {**msg, "metadata": {**(msg["metadata"] or {}), "label": "refund"}}
    with pg.write() as session:
        session.execute(
            text(
                "UPDATE tracked_thread SET lease_owner = :o, lease_epoch = 1,"
                " lease_until = now() + interval '60 seconds' WHERE thread_id = :t"
            ),
            {"o": OWNER, "t": thread},
        )
    fence: SlotFence = slot_fence(pg, OWNER)
    page_holds, renewal_holds = threading.Event(), threading.Event()
    page_pid: list[int] = []
    errors: dict[str, BaseException] = {}

    def store_waits_on_page() -> bool:
        with pg.read() as session:
            waiting = session.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE :p = ANY(pg_blocking_pids(pid))"),
                {"p": page_pid[0]},
            ).scalar_one()
        return bool(waiting)

    def page() -> None:  # PageWriter's grouped transaction: lock_threads, then check_lease
        with pg.write(small=True) as session:
            page_pid.append(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
            lock_threads(session, [thread])
            page_holds.set()
            assert renewal_holds.wait(WAIT)
            _until(store_waits_on_page, "the push's record to wait on the page write")
            check_lease(session, thread, OWNER, 1, TTL)

    def renewal() -> None:  # Replica.renew: renew_threads, then renew_jobs, one transaction
        with pg.write(small=True) as session:
            assert page_holds.wait(WAIT)
            assert renew_threads(session, OWNER, [(thread, 1)], TTL) == {thread}
            renewal_holds.set()
            _until(store_waits_on_page, "the push's record to wait on the page write")
            assert renew_jobs(session, OWNER, [("push", fence.held.epoch)], TTL) == {"push"}

    def store() -> None:  # the push records the modify's answer under its slot guard
        assert renewal_holds.wait(WAIT)
        store_outcomes(pg, [Outcome(snap, "applied", 1, answer)], fence.guard)

    def run(name: str, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:
            errors[name] = exc

    steps = [
        threading.Thread(target=run, args=(n, b))
        for n, b in (("page", page), ("renewal", renewal), ("store", store))
    ]
    for step in steps:
        step.start()
    for step in steps:
        step.join(WAIT * 3)
    assert not any(step.is_alive() for step in steps)
    assert errors == {}
    assert show_metadata(pg, thread, msg["id"]).state == "applied"
