"""``kar refresh``: once, periodically (``--every 1h``), or from a Redis Stream (``stream``)."""

from __future__ import annotations

from pathlib import Path

import typer

from kar.cli_helpers import PROJECT_DIR, console, guard, open_project

refresh_app = typer.Typer(
    help="Refresh knowledge for users with new interactions and items new to the catalog.",
    invoke_without_command=True,
)


@refresh_app.callback()
def refresh_command(
    ctx: typer.Context,
    project: Path = PROJECT_DIR,
    every: str | None = typer.Option(
        None, "--every", help="Run periodically, e.g. 30m, 1h, 1d (Ctrl-C stops)."
    ),
    source: str | None = typer.Option(None, help="Data source name (default: kind:path)."),
) -> None:
    """Run one incremental refresh (for cron or Airflow), or every ``--every``."""
    if ctx.invoked_subcommand is not None:
        return
    from kar.refresh import parse_interval, run_every

    proj = open_project(project)

    def once() -> None:
        report = proj.refresh(source=source)
        console.print(f"[green]refresh[/green] {report.summary()}")

    if every is None:
        guard(once)
    else:
        seconds = guard(parse_interval, every)
        console.print(f"refreshing every {every}; Ctrl-C stops")
        guard(run_every, seconds, once)


@refresh_app.command("stream")
def stream_command(
    project: Path = PROJECT_DIR,
    url: str = typer.Option("redis://127.0.0.1:6379/0", envvar="KAR_REDIS_URL"),
    stream: str = typer.Option("kar:interactions", help="Redis Stream of interaction events."),
    group: str = typer.Option("kar-refresh", help="Consumer group."),
    consumer: str = typer.Option("refresh-1", help="This consumer (keep across restarts)."),
    batch_size: int = typer.Option(100, help="Most events per micro-batch."),
    wait_ms: int = typer.Option(1000, help="Longest wait for a micro-batch to fill."),
    max_batches: int | None = typer.Option(None, help="Stop after this many micro-batches."),
) -> None:
    """Consume interaction events from a Redis Stream and refresh the users they touch."""
    from kar.refresh.stream import StreamRefresher

    proj = open_project(project)

    def go() -> int:
        refresher = StreamRefresher(
            proj.folder,
            url=url,
            stream=stream,
            group=group,
            consumer=consumer,
            batch_size=batch_size,
            wait_ms=wait_ms,
        )
        console.print(
            f"consuming {stream} as {group}/{consumer}; dead letters to {refresher.dead_letter}"
        )
        return refresher.run_forever(
            max_batches, on_batch=lambda r: console.print(f"[green]batch[/green] {r.summary()}")
        )

    guard(go)
