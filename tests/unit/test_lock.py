"""One daemon per data dir: a second one is refused, naming the holder; a dead holder leaves no stale lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.lock import DataDirLock, DataDirLocked


def test_a_second_lock_on_the_data_dir_is_refused_naming_the_holder(tmp_path):
    first = DataDirLock(tmp_path).acquire()
    with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
        DataDirLock(tmp_path).acquire()
    first.release()
    DataDirLock(tmp_path).acquire().release()


def test_a_holder_killed_with_sigkill_leaves_the_lock_free(tmp_path):
    script = (
        "import pathlib, time\n"
        "from server.lock import DataDirLock\n"
        f"DataDirLock(pathlib.Path({str(tmp_path)!r})).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    with pytest.raises(DataDirLocked, match=f"pid {holder.pid}"):
        DataDirLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    DataDirLock(tmp_path).acquire().release()
