"""`threadsync emulator`: serve the Assistants messages API emulator on a real socket."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from worker.emulator import Behaviour, Emulator, serve
from worker.emulator.behaviour import (
    CURSOR_MISSING_CHOICES,
    METADATA_CHOICES,
    TIES_CHOICES,
    UNKNOWN_ROUTE_CHOICES,
    UNKNOWN_THREAD_CHOICES,
    UNKNOWN_VERSION_CHOICES,
)
from worker.emulator.identity import ENTRA_MODES, TOKEN_PATH, Identity
from worker.export.output import atomic_output
from worker.logs import get_logger, register_secret

_ENV = "THREADSYNC_EMULATOR__"


def _choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{name} must be one of {', '.join(choices)}")
    return value


def emulator(
    host: Annotated[str, typer.Option(envvar=_ENV + "HOST", help="Interface to bind.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(envvar=_ENV + "PORT", help="TCP port.")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(envvar=_ENV + "API_KEY", help="Key to accept (generated when omitted)."),
    ] = None,
    seed: Annotated[int, typer.Option(envvar=_ENV + "SEED", help="Seed for data.")] = 0,
    threads: Annotated[
        int, typer.Option(envvar=_ENV + "THREADS", help="Threads to seed (0: start empty).")
    ] = 0,
    messages: Annotated[
        int, typer.Option(envvar=_ENV + "MESSAGES", help="Messages per seeded thread.")
    ] = 20,
    latency_ms: Annotated[
        float, typer.Option(envvar=_ENV + "LATENCY_MS", help="Latency added to every call.")
    ] = 0.0,
    state: Annotated[
        Path | None,
        typer.Option(envvar=_ENV + "STATE", help="Keep the state in this file across restarts."),
    ] = None,
    cursor_missing: Annotated[
        str,
        typer.Option(
            envvar=_ENV + "CURSOR_MISSING",
            help=f"Answer to a cursor naming a deleted/unknown message: {CURSOR_MISSING_CHOICES}.",
        ),
    ] = "404",
    metadata: Annotated[
        str,
        typer.Option(envvar=_ENV + "METADATA", help=f"Metadata modify: {METADATA_CHOICES}."),
    ] = "merge",
    ties: Annotated[
        str,
        typer.Option(envvar=_ENV + "TIES", help=f"Order within one second: {TIES_CHOICES}."),
    ] = "reverse",
    threads_file: Annotated[
        Path | None,
        typer.Option(
            "--threads-file",
            envvar=_ENV + "THREADS_FILE",
            help="Write the seeded thread ids here, one per line (for `threads add --from-file`)"
            " instead of printing them.",
        ),
    ] = None,
    unknown_route: Annotated[
        str,
        typer.Option(
            envvar=_ENV + "UNKNOWN_ROUTE",
            help=f"Answer to a path nothing lives at: {UNKNOWN_ROUTE_CHOICES}.",
        ),
    ] = "family",
    unknown_version: Annotated[
        str,
        typer.Option(
            envvar=_ENV + "UNKNOWN_VERSION",
            help=f"Answer to an api-version Azure does not serve: {UNKNOWN_VERSION_CHOICES}.",
        ),
    ] = "resource",
    unknown_thread: Annotated[
        str,
        typer.Option(
            envvar=_ENV + "UNKNOWN_THREAD",
            help=f"Answer to a thread id that does not exist: {UNKNOWN_THREAD_CHOICES}.",
        ),
    ] = "named",
    entra: Annotated[
        str,
        typer.Option(
            envvar=_ENV + "ENTRA",
            help="Families that take only Entra tokens: off (the key works everywhere), foundry"
            " (as the real service), all (key authentication disabled by policy).",
        ),
    ] = "off",
    token_lifetime: Annotated[
        float,
        typer.Option(
            envvar=_ENV + "TOKEN_LIFETIME",
            min=1,
            help="Seconds each managed-identity token lives (Entra: 3600-5400).",
        ),
    ] = 3600.0,
    identity_header: Annotated[
        str | None,
        typer.Option(
            envvar=_ENV + "IDENTITY_HEADER",
            help="Secret the token endpoint wants in X-IDENTITY-HEADER (generated when omitted).",
        ),
    ] = None,
) -> None:
    """Serve the Assistants messages API emulator (Azure, OpenAI and Foundry paths)."""
    behaviour = Behaviour().updated(
        {
            "cursor_missing": _choice(cursor_missing, CURSOR_MISSING_CHOICES, "--cursor-missing"),
            "metadata": _choice(metadata, METADATA_CHOICES, "--metadata"),
            "ties": _choice(ties, TIES_CHOICES, "--ties"),
            "unknown_route": _choice(unknown_route, UNKNOWN_ROUTE_CHOICES, "--unknown-route"),
            "unknown_version": _choice(
                unknown_version, UNKNOWN_VERSION_CHOICES, "--unknown-version"
            ),
            "unknown_thread": _choice(unknown_thread, UNKNOWN_THREAD_CHOICES, "--unknown-thread"),
        }
    )
    key = api_key or "emu-" + secrets.token_urlsafe(18)
    register_secret(key)
    header = identity_header or "emu-id-" + secrets.token_urlsafe(12)
    ident = Identity(lifetime=token_lifetime, header=header)
    ident.configure(entra=_choice(entra, ENTRA_MODES, "--entra"))
    loaded = state is not None and state.exists()
    emu = Emulator(api_key=key, behaviour=behaviour, state_path=state, identity=ident)
    if loaded:
        # The state file carries the behaviour it was saved with; explicit options win.
        emu.behaviour = behaviour
    emu.faults.latency_ms = latency_ms
    if threads and not loaded:
        emu.seed(seed=seed, threads=threads, messages=messages)
    thread_ids = [t.id for t in emu.threads.live_asc()]
    base = f"http://{host}:{port}"
    # The key is printed on purpose: it is the emulator's own, made for the user to copy.
    typer.echo(f"AZURE_OPENAI_ENDPOINT={base}")
    typer.echo(f"AZURE_OPENAI_API_KEY={key}")
    typer.echo("OPENAI_API_VERSION=2024-08-01-preview")
    typer.echo(f"# OpenAI platform: OPENAI_BASE_URL={base}/v1 (Bearer key, OpenAI-Beta header)")
    typer.echo(f"# Foundry classic: {base}/api/projects/<project>?api-version=2025-05-01")
    typer.echo(
        f"# Entra (managed identity): IDENTITY_ENDPOINT={base}{TOKEN_PATH}"
        f" IDENTITY_HEADER={header} THREADSYNC_API__AUTH=entra"
        " THREADSYNC_API__CREDENTIAL=managed-identity"
    )
    _announce_threads(thread_ids, threads_file)
    get_logger().info(
        "emulator.start",
        host=host,
        port=port,
        threads=len(emu.threads.live_asc()),
        state=str(state) if state else None,
    )
    serve(emu, host=host, port=port)


def _announce_threads(thread_ids: list[str], threads_file: Path | None) -> None:
    """The seeded ids, so a new user can track them: `threads add --from-file FILE`."""
    if threads_file is None:
        typer.echo(f"# {len(thread_ids)} threads (track them with `threadsync threads add ID...`):")
        for thread_id in thread_ids:
            typer.echo(thread_id)
        return
    with atomic_output(str(threads_file)) as stream:
        stream.write("".join(f"{t}\n" for t in thread_ids).encode())
    typer.echo(
        f"# {len(thread_ids)} thread ids written to {threads_file}:"
        f" threadsync threads add --from-file {threads_file}"
    )


def register(app: typer.Typer) -> None:
    """Add the ``emulator`` command to the root application."""
    app.command("emulator")(emulator)
