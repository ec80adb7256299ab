"""`threadsync metadata set|show` (local edits, queued) and `threadsync push` (send them)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from worker.cli.common import (
    EXIT_FAILED,
    api_client,
    command,
    globals_of,
    out_console,
    run_async,
)
from worker.cli.say import notice, result
from worker.cli.tables import iso_utc
from worker.errors import ConfigError
from worker.ids import check_id
from worker.outbox import (
    MetadataView,
    PushReport,
    edit_counts,
    push_pending,
    set_metadata,
    show_metadata,
)
from worker.outbox.merge import POLICIES
from worker.store.db import Mirror

metadata_app = typer.Typer(
    rich_markup_mode=None,
    help="Edit message metadata locally; `threadsync push` sends the edits.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(metadata_app, name="metadata")
    app.command("push")(push)


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``key=value`` arguments (split at the first ``=``; the value may be empty)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{pair!r} is not KEY=VALUE; use --unset KEY to remove a key")
        out[key] = value
    return out


@metadata_app.command("set")
@command
def set_(
    ctx: typer.Context,
    thread_id: Annotated[str, typer.Argument(help="The message's thread.")],
    message_id: Annotated[str, typer.Argument(help="The message.")],
    pairs: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE pairs to set.", show_default=False)
    ] = None,
    unset: Annotated[
        list[str] | None,
        typer.Option(
            "--unset",
            "-u",
            envvar="THREADSYNC_METADATA__UNSET",
            help="A key to unset (repeatable); it is sent blank.",
        ),
    ] = None,
) -> None:
    """Record a metadata edit locally and queue it for `threadsync push`."""
    check_id(thread_id, "thread")
    check_id(message_id, "message")
    if not pairs and not unset:
        raise ConfigError("nothing to do: give KEY=VALUE pairs and/or --unset KEY")
    mirror = globals_of(ctx).mirror(create=False)  # an edit needs a mirrored message
    edit = set_metadata(
        mirror, thread_id, message_id, set=parse_pairs(pairs or []), unset=unset or []
    )
    if edit.state == "unchanged":
        result(f"{message_id}: metadata already as asked; nothing queued")
    else:
        result(
            f"{message_id}: queued ({', '.join(edit.keys) or 'no key differs any more'});"
            " run `threadsync push` to send"
        )


def view_json(view: MetadataView) -> dict[str, Any]:
    return {
        "thread_id": view.thread_id,
        "message_id": view.message_id,
        "state": view.state,
        "mirrored": view.mirrored,
        "desired": view.desired,
        "base": view.base,
        "pending_keys": view.pending_keys,
        "conflicts": [
            {"key": c.key, "base": c.base, "local": c.local, "remote": c.remote}
            for c in view.conflicts
        ],
        "last_error": view.last_error,
        "attempts": view.attempts,
        "updated_at": view.updated_at,
        "applied_at": view.applied_at,
    }


def _show_map(title: str, values: dict[str, str] | None) -> None:
    out_console.print(f"{title}:" + ("" if values else " (none)"))
    for key, value in sorted((values or {}).items()):
        out_console.print(f"  {key} = {value!r}" + ("  (unset: blank)" if value == "" else ""))


@metadata_app.command("show")
@command
def show(
    ctx: typer.Context,
    thread_id: Annotated[str, typer.Argument(help="The message's thread.")],
    message_id: Annotated[str, typer.Argument(help="The message.")],
    as_json: Annotated[
        bool, typer.Option("--json", envvar="THREADSYNC_METADATA__JSON", help="One JSON object.")
    ] = False,
) -> None:
    """The mirrored metadata, the queued edit, its state and any conflict."""
    check_id(thread_id, "thread")
    check_id(message_id, "message")
    view = show_metadata(globals_of(ctx).mirror(create=False), thread_id, message_id)
    if as_json:
        out_console.out(
            orjson.dumps(view_json(view), option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z).decode()
        )
        return
    out_console.print(f"{thread_id} {message_id}: {view.state}")
    _show_map("mirrored", view.mirrored)
    if view.state not in ("clean", "applied"):
        _show_map("desired", view.desired)
        out_console.print(f"pending keys: {', '.join(view.pending_keys) or '(none)'}")
    for c in view.conflicts:
        out_console.print(
            f"[red]conflict[/] {c.key}: base {c.base!r}, local {c.local!r}, remote {c.remote!r}"
        )
    if view.last_error:
        out_console.print(f"last error ({view.attempts} attempts): {view.last_error}")
    if view.state == "applied":
        out_console.print(f"applied at {iso_utc(view.applied_at, empty='never')}")


@command
def push(
    ctx: typer.Context,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            envvar="THREADSYNC_PUSH__CONFLICT_POLICY",
            help="A key changed on both sides: fail (hold the edit), local or remote wins.",
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            envvar="THREADSYNC_PUSH__RETRY_FAILED",
            help="Try edits that failed permanently (400/404/401/403) again.",
        ),
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            envvar="THREADSYNC_PUSH__CONCURRENCY",
            min=1,
            max=256,
            help="Edits pushed at once (default 8).",
        ),
    ] = None,
) -> None:
    """Send every queued metadata edit, then exit (0 only if all of them were applied)."""
    if policy is not None and policy not in POLICIES:
        raise ConfigError(f"--policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    g = globals_of(ctx)
    settings = g.settings(push={"conflict_policy": policy, "concurrency": concurrency})
    mirror = g.mirror(create=False)  # no mirror, no edits: the URL is wrong

    async def go() -> PushReport:
        async with api_client(settings) as client:
            return await push_pending(
                client,
                mirror,
                policy=settings.push.conflict_policy,
                retry_failed=retry_failed,
                concurrency=settings.push.concurrency,
                retry=settings.retry,
            )

    report = run_async(go)
    print_report(report)
    if not retry_failed:
        _mention_earlier_failures(mirror, report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _mention_earlier_failures(mirror: Mirror, report: PushReport) -> None:
    """A push leaves edits that failed on an earlier push alone; say they are still there."""
    with mirror.read() as session:
        failed = edit_counts(session)["failed"]
    earlier = failed - len(report.failed)
    if earlier > 0:
        notice(
            f"{earlier} edit{'s' if earlier != 1 else ''} failed on an earlier"
            " push and stay unsent; `threadsync status` counts them, `threadsync metadata show"
            " THREAD MSG` gives the error; retry with `threadsync push --retry-failed`"
        )


def print_report(report: PushReport) -> None:
    written = sum(o.written for o in report.applied)
    result(
        f"push: {len(report.outcomes)} edits; {len(report.applied)} applied ({written} written),"
        f" {len(report.conflicted)} conflicted, {len(report.failed)} failed,"
        f" {len(report.deferred)} left pending; {report.requests} requests in"
        f" {report.seconds:.1f}s"
    )
    for o in report.conflicted:
        result(
            f"  {o.message_id}: conflict on {', '.join(o.keys)}; see `threadsync"
            f" metadata show {o.thread_id} {o.message_id}`, or push with --policy local|remote"
        )
    for o in report.failed + report.deferred:
        result(f"  {o.message_id}: {o.result}: {o.error}")
    if report.aborted:
        result(f"  stopped: {report.aborted}")
