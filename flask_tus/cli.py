"""``flask tus ...``: maintenance commands, each on its own event loop."""

from __future__ import annotations

import asyncio

import click
from flask import current_app
from flask.cli import AppGroup

from .core.maintenance import sweep

tus_cli = AppGroup("tus", help="Maintain tus uploads.")


@tus_cli.command("delete-expired")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
def delete_expired(dry_run: bool) -> None:
    """Delete expired uploads (data and record together) and the empty data of interrupted
    creations; report orphans."""
    handler = current_app.extensions["tus"].handler
    try:
        report = asyncio.run(sweep(handler, dry_run=dry_run))
    except Exception as exc:
        # The store or the upload directory cannot be read at all: one line, exit status 1.
        raise click.ClickException(f"cleanup failed: {exc!r}") from exc
    verb = "would delete" if dry_run else "deleted"
    for upload_id in report.expired:
        click.echo(f"{verb} expired upload {upload_id}")
    for upload_id in report.busy:
        click.echo(f"skipped expired upload {upload_id}: in use")
    for upload_id in report.failed:
        click.echo(f"could not delete expired upload {upload_id} (see the log)", err=True)
    for upload_id in report.interrupted:
        click.echo(f"{verb} empty data of an interrupted creation: {upload_id}")
    for upload_id in report.orphan_data:
        click.echo(f"orphan data without a record: {upload_id}")
    for upload_id in report.orphan_records:
        click.echo(f"orphan record without data: {upload_id}")
    click.echo(
        f"{verb} {len(report.expired)} expired, skipped {len(report.busy)} in use, "
        f"{len(report.orphan_data)} orphan data, {len(report.orphan_records)} orphan records"
        + (f", {verb} {len(report.interrupted)} interrupted" if report.interrupted else "")
        + (f", {len(report.failed)} failed" if report.failed else "")
    )
    if report.failed:
        raise SystemExit(1)


# The seed's spelling, kept for existing cron jobs.
tus_cli.add_command(delete_expired, "delete_expired")
