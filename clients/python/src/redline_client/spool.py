"""The spool of a run folder, in the format `redline train` writes, so `redline push` and
`redline-push` deliver either's: `metrics.jsonl` holds every step as one JSON line
(`{"step", "time", "metrics"}`), `metrics.jsonl.sent` the byte offset up to which the server has
taken them, and `server-run.json` the run id, the body that creates the run, the server and how the
run ended. The token is never written."""

from __future__ import annotations

import json
import os
from pathlib import Path

LOG = "metrics.jsonl"
OFFSET = "metrics.jsonl.sent"
RECORD = "server-run.json"
#: Steps per ingest request.
BATCH_STEPS = 1000


def replace_file(path: Path, text: str) -> None:
    """Written to a temp file and renamed: a crash leaves the old content or the new, never a torn
    one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Spool:
    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)
        self.log = self.dir / LOG

    def offset(self) -> int:
        try:
            return int((self.dir / OFFSET).read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def save_offset(self, offset: int) -> None:
        replace_file(self.dir / OFFSET, str(offset))

    def pending(self, offset: int, most: int = BATCH_STEPS) -> tuple[list[dict], int]:
        """Complete lines after `offset` (at most `most`) and the offset after them. A line still
        being written (no newline yet) is left for later; a line that is not JSON is passed over,
        since nothing could ever deliver it."""
        steps, end = [], offset
        try:
            f = open(self.log, "rb")
        except FileNotFoundError:
            return steps, end
        with f:
            f.seek(offset)
            while len(steps) < most:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                end += len(line)
                try:
                    steps.append(json.loads(line))
                except ValueError:
                    pass
        return steps, end

    def undelivered(self) -> int:
        return len(self.pending(self.offset(), most=1 << 62)[0])

    def read_record(self) -> dict:
        path = self.dir / RECORD
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{self.dir} has no {RECORD}: it is not a Redline run folder") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def write_record(self, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        replace_file(self.dir / RECORD, json.dumps(record, indent=2))
