"""A job's worker log, as GET /jobs/{id}/logs reads it: its last lines, or the bytes after an offset.

The log is capped (worker.outputs.log_cap): worker.log holds its newest part and worker.log.1 the one before;
both readers read across the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from scheduler.local.tail import last_lines
from server.db.models import Attempt, Job
from server.db.transitions import current_attempt
from worker.spec.layout import LOG_FILE, older_log


def logs(session: Session, job: Job, tail: int, attempt_number: int | None) -> str:
    attempt = _log_attempt(session, job, attempt_number)
    if attempt is None:
        return ""
    return last_lines(Path(attempt.run_dir) / LOG_FILE, tail)


@dataclass(frozen=True)
class LogChunk:
    """The log's bytes after an offset, the offset to ask from next, and whose log it is."""

    data: bytes
    offset: int
    attempt: int | None


LOG_CHUNK_BYTES = 1 << 20


def log_after(
    session: Session, job: Job, offset: int, attempt_number: int | None, most: int = LOG_CHUNK_BYTES
) -> LogChunk:
    """`?offset=`: the bytes of the attempt's log after `offset` (at most `most`), for a client that follows it.

    An offset beyond the end of worker.log is one into the part the log's cap has since rotated to worker.log.1
    (worker.outputs.log_cap): the rest of that part comes first, with 0 as the next offset (the start of the
    new worker.log). When that part is shorter too (another attempt's log, none yet, or two rotations between
    two reads) the reading starts again from 0 of worker.log; what the client had not read of the parts
    rotated away meanwhile is gone.
    """
    attempt = _log_attempt(session, job, attempt_number)
    if attempt is None:
        return LogChunk(b"", 0, None)
    path = Path(attempt.run_dir) / LOG_FILE
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if offset > size:
                rest = _older_after(path, offset, most)
                if rest is not None:
                    return LogChunk(rest[0], rest[1], attempt.number)
            start = offset if offset <= size else 0
            f.seek(start)
            data = f.read(most)
    except FileNotFoundError:
        return LogChunk(b"", 0, attempt.number)
    return LogChunk(data, start + len(data), attempt.number)


def _older_after(path: Path, offset: int, most: int) -> tuple[bytes, int] | None:
    """The bytes of the log's older part (worker.log.1) after `offset` and the next offset (0 once they are all
    read); None when that part does not reach `offset`."""
    try:
        with open(path.with_name(older_log(path.name)), "rb") as f:
            size = f.seek(0, 2)
            if offset > size:
                return None
            f.seek(offset)
            data = f.read(most)
    except FileNotFoundError:
        return None
    after = offset + len(data)
    return data, after if after < size else 0


def _log_attempt(session: Session, job: Job, attempt_number: int | None) -> Attempt | None:
    assert job.id is not None
    if attempt_number is None:
        return current_attempt(session, job.id)
    return session.exec(select(Attempt).where(Attempt.job_id == job.id, Attempt.number == attempt_number)).first()
