"""A worker that prints 200 MiB as fast as it can leaves a log within FTQ_WORKER_LOG_MAX_BYTES: the newest
output kept, and its failure quoting its last words (worker.outputs.log_cap, tests/integration/chatty_worker.py).

Before the cap, one job's log filled a 48 MiB data dir in half a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.chatty_worker import LAST_WORDS, LINE
from tests.integration.daemon import Daemon

pytestmark = pytest.mark.integration

CAP = 1 << 20


def test_a_worker_printing_200_mib_keeps_its_log_within_the_cap_and_its_last_words(tmp_path: Path):
    d = Daemon(
        tmp_path / "ftq", worker_module="tests.integration.chatty_worker", cpu_slots="1", worker_log_max_bytes=str(CAP)
    )
    d.env["PYTHONPATH"] = str(REPO)
    d.start()
    try:
        job_id = d.submit(tiny_spec(name="chatty", gpus=0, max_steps=200))["id"]  # 200 MiB of lines
        job = wait_for(lambda: d.ended(job_id), timeout=120, interval=0.2, what="the chatty job to end")
        assert job["state"] == "failed", job
        run_dir = Path(d.job(job_id)["attempts"][0]["run_dir"])
        newer, older = run_dir / "worker.log", run_dir / "worker.log.1"
        assert newer.stat().st_size + older.stat().st_size <= CAP
        assert older.stat().st_size > CAP // 2 - LINE  # rotated, not truncated: half the cap in each part
        # the newest output is what is kept: the two parts read as one end with the last numbered lines, whole
        kept = (older.read_bytes() + newer.read_bytes()).decode().splitlines()
        assert kept[-len(LAST_WORDS) :] == list(LAST_WORDS)
        numbered = [int(line.split()[1]) for line in kept[: -len(LAST_WORDS)]]
        assert numbered == list(range(numbered[0], numbered[0] + len(numbered)))
        assert numbered[-1] == 200 * ((1 << 20) // LINE) - 1
        assert all(len(line) == LINE - 1 for line in kept[: -len(LAST_WORDS)])
        # the failure's tail, and GET /jobs/{id}/logs, read across the two parts
        tail = d.job(job_id)["attempts"][0]["log_tail"]
        assert tail.splitlines()[-len(LAST_WORDS) :] == list(LAST_WORDS), tail
        lines_in_newer = newer.read_bytes().count(b"\n")
        got = d.http.get(f"/jobs/{job_id}/logs", params={"tail": lines_in_newer + 3}).text.splitlines()
        assert got == kept[-(lines_in_newer + 3) :]
        # a reader that followed worker.log before it was rotated gets the rest of that part, then starts anew
        offset = older.stat().st_size - LINE
        rest = d.http.get(f"/jobs/{job_id}/logs", params={"offset": offset})
        assert rest.content == older.read_bytes()[offset:] and rest.headers["x-log-offset"] == "0"
        start = d.http.get(f"/jobs/{job_id}/logs", params={"offset": 0})
        assert start.content == newer.read_bytes()
    finally:
        d.close()
