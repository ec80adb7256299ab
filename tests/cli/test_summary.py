"""The run summary `threadsync sync` prints: figures on one line, failures grouped by cause."""

from __future__ import annotations

from worker.cli.sync import summary_lines
from worker.sync.outcome import ThreadOutcome
from worker.sync.plan import Counts
from worker.sync.runner import RunReport


def test_failures_of_one_cause_are_one_group_and_gone_is_not_ok() -> None:
    report = RunReport(run_id=7, kind="sync", seconds=41.25)
    report.outcomes.append(ThreadOutcome("thread_ok", "synced", Counts(added=12), requests=3))
    report.outcomes.append(
        ThreadOutcome("thread_gone", "gone", error="the server no longer has this thread")
    )
    for n in range(4998):
        report.outcomes.append(
            ThreadOutcome(
                f"thread_{n:04d}",
                "failed",
                requests=1,
                error="GET /threads/{thread_id}/messages: HTTP 500: boom",
                cause="HTTP 500",
            )
        )
    report.outcomes.append(
        ThreadOutcome("thread_slow", "failed", error="no usable answer", cause="ReadTimeout")
    )
    lines = summary_lines(report)
    assert lines[0] == (
        "sync run 7: 1/5001 threads ok, 1 gone, 4999 failed; 12 added, 0 changed, 0 deleted,"
        " 0 restored; 5001 requests in 41.2s"
    )
    assert "  thread_gone: gone (new): the server no longer has this thread" in lines
    assert "  failed: 4,998 threads: HTTP 500" in lines
    assert "  failed: 1 thread: ReadTimeout" in lines
    assert "    ... and 4,995 more (threadsync status)" in lines
    assert len(lines) < 15  # not one line per thread
    assert not report.ok
