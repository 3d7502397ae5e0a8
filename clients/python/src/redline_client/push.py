"""`redline-push DIR`: delivers what a run folder still owes a server (the steps after the spool
offset, and the run's end as it was recorded), with no training running. Works on the folders of
`redline_client.Run` and of `redline train` alike (the same spool format)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .run import FINISH_GRACE, Delivery, RefusedError, Run, leftover
from .spool import Spool


def push(folder, server: str | None = None, token: str | None = None, grace: float = FINISH_GRACE) -> Delivery:
    """Sends the undelivered steps of the run in `folder` to `server` (default: the one it was
    trained against), creating or resuming the run there, then finishes it with the recorded end."""
    spool = Spool(folder)
    record = spool.read_record()
    url = server or record.get("server")
    if not url:
        raise ValueError(f"run {record['run_id']} was logged offline: give the server to push to with --server")
    if not spool.log.is_file():
        raise ValueError(f"{folder} has no metrics.jsonl: there are no steps to push")
    create = record.get("create") or {}
    run = Run(
        url,
        record["run_id"],
        name=create.get("name"),
        project=create.get("project"),
        tags=create.get("tags", ()),
        config=create.get("config"),
        rules=create.get("rules"),
        token=token,
        spool_dir=folder,
        finish_grace=grace,
    )
    ended = record.get("ended")
    if ended:
        return run.finish(ended["status"], ended.get("reason"))
    # Interrupted: deliver the steps, leave the run's status as it is.
    return run.deliver()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="redline-push", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="the run folder (the spool_dir of a Run, or the --output-dir of `redline train`)")
    p.add_argument("--server", default=os.environ.get("REDLINE_SERVER"), help="server URL [default: the run's]")
    p.add_argument("--token", default=os.environ.get("REDLINE_TOKEN"), help="bearer token [env: REDLINE_TOKEN]")
    p.add_argument("--timeout", type=float, default=FINISH_GRACE, help="give up after this many seconds without progress")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        before = Spool(a.dir).undelivered()
        delivery = push(a.dir, a.server, a.token, a.timeout)
    except (ValueError, OSError, RefusedError) as e:
        print(f"redline-push: {e}", file=sys.stderr)
        return 2
    if delivery.complete:
        print(f"redline-push: sent {before - delivery.undelivered} steps of {a.dir}")
        return 0
    print(leftover(delivery, a.server, a.dir), file=sys.stderr)
    return 75  # EX_TEMPFAIL: try again later


if __name__ == "__main__":
    sys.exit(main())
