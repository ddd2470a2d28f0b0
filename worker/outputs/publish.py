"""The trained adapter or model written where the spec's `output_dir` says, as users of
`llamafactory-cli` expect to find it.

The worker always saves into RUN_DIR/output first (the daemon's own record of the
result); then each file is hard-linked into output_dir, or copied where the two
lie on different filesystems. Each file lands under a temporary name and is
renamed into place, so a reader never sees half a file, and a crash leaves
whole files only. output_dir must lie inside the daemon's output dirs
(FTQ_OUTPUT_DIRS): checked at submit and again here, after symlinks, right before
writing.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from worker.preflight.confine import BadFile, OutsideInputDirs, Roots, show, within

log = logging.getLogger(__name__)


def publish(source: Path, output_dir: str, roots: Roots) -> str:
    """Every file of `source` placed in `output_dir`; returns output_dir's real path, or BadFile saying why not."""
    target = os.path.realpath(output_dir)
    if roots is not None and not within(target, roots):
        raise OutsideInputDirs(
            output_dir,
            f"{show(output_dir)} lies outside the directories this daemon may write (FTQ_OUTPUT_DIRS: "
            f"{', '.join(map(show, roots))})",
        )
    try:
        os.makedirs(target, exist_ok=True)
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            place(file, Path(target) / file.relative_to(source))
    except OSError as exc:
        raise BadFile(output_dir, f"writing the result into {show(output_dir)} failed: {exc}") from exc
    log.info("result written to %s", target)
    return target


def place(file: Path, destination: Path) -> None:
    """`file` at `destination`, whole: linked (or copied) under a temporary name, then renamed over it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.ftq-partial")
    temporary.unlink(missing_ok=True)
    try:
        os.link(file, temporary)  # the same bytes, no copy: the run dir and output_dir share a filesystem
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(file, temporary)
    os.replace(temporary, destination)
