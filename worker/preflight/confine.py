"""Files a job names, read only inside the daemon's input dirs, only when regular, and never blocking.

The daemon checks a spec's paths at submit, but files change after that: a
dataset_info.json rewritten to point elsewhere, a weights file swapped for a
symlink. So every file is checked again at the moment it is opened, on the file
actually opened: `open` with O_NONBLOCK (opening a FIFO for reading would wait for
a writer forever), `fstat` of the descriptor (a regular file, not a FIFO, device or
socket), and the descriptor's own path read back from /proc/self/fd, which names
the file the kernel opened whatever symlink was swapped in meanwhile; it must lie
inside an input dir. Every failure is a BadFile whose message names the file and
what is wrong with it, in a sentence a person can act on.

Pure (os only): the server uses it at submit, the worker when it reads.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

# What the daemon tells its workers (scheduler.local.supervisor passes them): the input dirs as it resolved them,
# os.pathsep-separated, the output dirs likewise (where a job may write besides its run dir: output_dir,
# tokenized_path), and whether a spec may run a model directory's own Python (trust_remote_code).
INPUT_DIRS_ENV = "FTQ_INPUT_DIRS"
OUTPUT_DIRS_ENV = "FTQ_OUTPUT_DIRS"
REMOTE_CODE_ENV = "FTQ_ALLOW_REMOTE_CODE"

# A model's config.json, a dataset_info.json and a DeepSpeed config are a few KiB; the largest real ones stay
# well under 1 MiB. 4 MiB leaves room for any of them and keeps a request from reading (and parsing) a
# file the size of a weights shard named by mistake or on purpose.
JSON_LIMIT = 4 << 20

Roots = Sequence[str] | None  # real paths of the input dirs; None: not confined (a worker run by hand)

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_SHOWN_CHARS = 200  # of a path in a message: a 5000-character name is cut, not echoed whole


class BadFile(Exception):
    """A file a job names that may not or cannot be read; the message names it and says why."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(message)
        self.path = os.fspath(path)


class OutsideInputDirs(BadFile):
    """The file's real path (symlinks resolved) is not inside any of the daemon's input dirs."""


class NotARegularFile(BadFile):
    """A FIFO, a socket, a device or a directory where a file is read (or a file where a directory is)."""


class FileTooLarge(BadFile):
    """Larger than what the daemon reads of such a file."""


class NotUtf8(BadFile):
    """Text that is not UTF-8; the message gives the line and column."""


class InvalidJson(BadFile):
    """Not JSON, or not the JSON expected; the message gives the line and column."""


class CannotRead(BadFile):
    """The name cannot be opened: missing, a symlink loop, too long, a NUL byte, permission denied."""


# ---- what the daemon tells the worker -----------------------------------------------------------------------


def worker_settings(
    input_dirs: Sequence[str | os.PathLike[str]],
    allow_remote_code: bool,
    output_dirs: Sequence[str | os.PathLike[str]] | None = None,
) -> dict[str, str]:
    """The environment a worker learns its confinement from, as the daemon resolved it."""
    settings = {
        INPUT_DIRS_ENV: os.pathsep.join(os.path.realpath(d) for d in input_dirs),
        REMOTE_CODE_ENV: "1" if allow_remote_code else "0",
    }
    if output_dirs is not None:
        settings[OUTPUT_DIRS_ENV] = os.pathsep.join(os.path.realpath(d) for d in output_dirs)
    return settings


def input_dirs_from_env(env: Mapping[str, str]) -> list[str] | None:
    """The input dirs the daemon gave this worker; None when it was started by hand, outside a daemon."""
    return _dirs(env.get(INPUT_DIRS_ENV))


def output_dirs_from_env(env: Mapping[str, str]) -> list[str] | None:
    """The dirs the daemon lets this worker write to besides its run dir; None when it was started by hand.

    A daemon that confines reads (FTQ_INPUT_DIRS set) but names no output dirs lets the worker write nowhere
    else: [] then, never None, so that a missing setting can never mean "anywhere".
    """
    dirs = _dirs(env.get(OUTPUT_DIRS_ENV))
    if dirs is None and env.get(INPUT_DIRS_ENV) is not None:
        return []
    return dirs


def _dirs(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [os.path.realpath(part) for part in value.split(os.pathsep) if part.strip()]


def remote_code_allowed(env: Mapping[str, str]) -> bool:
    return env.get(REMOTE_CODE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


REMOTE_CODE_RISK = (
    "it runs the Python files of the model directory as the daemon's user, with everything that user can read and write"
)


def remote_code_refusal() -> str:
    return (
        f"trust_remote_code is true, and this daemon does not allow remote code: {REMOTE_CODE_RISK}. "
        f"The operator may start the daemon with {REMOTE_CODE_ENV}=1; otherwise use a model that "
        "transformers supports natively and drop trust_remote_code"
    )


# ---- naming and checking paths ------------------------------------------------------------------------------


def show(path: str | os.PathLike[str]) -> str:
    """A path fit for a message: NUL and unencodable characters escaped, a very long one cut."""
    text = os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]}… ({len(text)} characters)"
    return text


def within(real: str, roots: Roots) -> bool:
    """Whether a real path lies inside one of the roots (or is one); always, when not confined."""
    if roots is None:
        return True
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def outside_message(path: str | os.PathLike[str], roots: Sequence[str]) -> str:
    return (
        f"{show(path)} leads outside the directories this daemon may read ({', '.join(roots)}; symlinks "
        "resolved); move it there or add its directory to FTQ_INPUT_DIRS"
    )


def explain_os_error(path: str | os.PathLike[str], exc: BaseException, what: str = "file") -> str:
    """The sentence for a name that cannot be used: missing, a loop, too long, a NUL byte, no permission."""
    shown = show(path)
    if isinstance(exc, ValueError):  # os refuses the name before asking the kernel
        if "\x00" in os.fspath(path):
            return f"{shown} contains a NUL byte, which no file name can hold"
        return f"{shown} holds characters no file name can hold ({exc})"
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return f"{shown} is not a {what} on the daemon's machine: it does not exist"
    if code == errno.ELOOP:
        return f"{shown} is a symlink loop (or a chain of more than 40 symlinks) and leads to no {what}"
    if code == errno.ENAMETOOLONG:
        return f"{shown} is too long a name (at most 4096 bytes a path and 255 a component)"
    if code in (errno.EACCES, errno.EPERM):
        return f"{shown} cannot be read by the daemon's user (permission denied)"
    if code == errno.ENOTDIR:
        return f"{shown} is not a {what}: a part of its path is a file, not a directory"
    if code == errno.ENXIO:
        return f"{shown} is a socket or a device, not a {what}"
    strerror = getattr(exc, "strerror", None) or str(exc)
    return f"{shown} cannot be read ({strerror})"


def real_path(path: str | os.PathLike[str], roots: Roots, what: str = "file") -> str:
    """The path with every symlink resolved, inside the roots, or BadFile saying why not.

    Whether it lies inside is decided first, on the path resolved as far as it goes, so that a name
    outside the roots is refused alike whether it exists or not: the daemon says nothing of what lies
    outside its input dirs.
    """
    try:
        loose = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        raise CannotRead(path, explain_os_error(path, exc, what)) from None
    if roots is not None and not within(loose, roots):
        raise OutsideInputDirs(path, outside_message(path, roots))
    try:
        real = os.path.realpath(path, strict=True)
    except (OSError, ValueError) as exc:
        raise CannotRead(path, explain_os_error(path, exc, what)) from None
    if roots is not None and not within(real, roots):  # a symlink swapped in between the two
        raise OutsideInputDirs(path, outside_message(path, roots))
    return real


def check_dir(path: str | os.PathLike[str], roots: Roots) -> str:
    """A directory inside the roots (its real path), or BadFile."""
    real = real_path(path, roots, "directory")
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise CannotRead(path, explain_os_error(path, exc, "directory")) from None
    if not stat.S_ISDIR(mode):
        raise NotARegularFile(path, f"{show(path)} is {kind_of(mode)}, not a directory")
    return real


def check_file(path: str | os.PathLike[str], roots: Roots) -> os.stat_result:
    """A regular file inside the roots, checked without opening it (its stat), or BadFile."""
    real = real_path(path, roots)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise CannotRead(path, explain_os_error(path, exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(path, st.st_mode)
    return st


def not_regular(path: str | os.PathLike[str], mode: int) -> NotARegularFile:
    return NotARegularFile(path, f"{show(path)} is {kind_of(mode)}, not a regular file; only files are read")


def kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a file"


def files_of(path: str | os.PathLike[str], roots: Roots) -> list[str]:
    """A file, or every file of a directory (its subdirectories passed over, as LLaMA-Factory does), each a
    regular file inside the roots, checked without opening (each is checked again when it is read)."""
    real = real_path(path, roots)
    try:
        is_dir = stat.S_ISDIR(os.stat(real).st_mode)
        if not is_dir:
            check_file(path, roots)
            return [os.fspath(path)]
        entries = sorted(entry.path for entry in os.scandir(path))
    except OSError as exc:
        raise CannotRead(path, explain_os_error(path, exc)) from None
    files = []
    for entry in entries:
        try:
            if stat.S_ISDIR(os.stat(entry).st_mode):
                continue
        except OSError:
            pass  # a dangling or looping link: check_file says which
        check_file(entry, roots)
        files.append(entry)
    return files


# ---- opening and reading ------------------------------------------------------------------------------------


def open_fd(path: str | os.PathLike[str], roots: Roots, limit: int | None = None) -> int:
    """A read-only descriptor of a regular file inside the roots, at most `limit` bytes, or BadFile.

    The stat checks come first, so that a device or a FIFO is not even opened in the common case; the
    descriptor is then checked itself, since the name may have been swapped between the two.
    """
    check_file(path, roots)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError) as exc:
        raise CannotRead(path, explain_os_error(path, exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(path, st.st_mode)
        if roots is not None and not within(_opened_path(fd, path), roots):
            raise OutsideInputDirs(path, outside_message(path, roots))
        if limit is not None and st.st_size > limit:
            raise FileTooLarge(path, too_large_message(path, st.st_size, limit))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _opened_path(fd: int, path: str | os.PathLike[str]) -> str:
    """The real path of the file behind a descriptor: what the kernel opened, not what the name says now."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (a container without it): the name resolved now is the next best thing
        return os.path.realpath(path)


def too_large_message(path: str | os.PathLike[str], size: int, limit: int) -> str:
    return f"{show(path)} is {_size(size)}; the daemon reads at most {_size(limit)} of such a file"


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def read_bytes(path: str | os.PathLike[str], roots: Roots, limit: int | None = None) -> bytes:
    """The whole content of a regular file inside the roots; a file that grows past `limit` while read is refused."""
    fd = open_fd(path, roots, limit)
    try:
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if limit is not None and total > limit:
                raise FileTooLarge(path, too_large_message(path, total, limit))
            chunks.append(chunk)
    except OSError as exc:
        raise CannotRead(path, explain_os_error(path, exc)) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_range(path: str | os.PathLike[str], roots: Roots, offset: int, size: int) -> bytes:
    """Up to `size` bytes from `offset` of a regular file inside the roots (a header, say)."""
    fd = open_fd(path, roots)
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        raise CannotRead(path, explain_os_error(path, exc)) from None
    finally:
        os.close(fd)


def decode_utf8(data: bytes, path: str | os.PathLike[str]) -> str:
    """UTF-8 text, or NotUtf8 naming the file, the line and the column (1-based, in bytes) of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = line_and_column(data, exc.start)
        bad = data[exc.start : exc.start + 4]
        raise NotUtf8(
            path,
            f"{show(path)} is not UTF-8 text: line {line}, column {column} (byte {exc.start}) holds {bad!r}; "
            "save it as UTF-8",
        ) from None


def line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def read_text(path: str | os.PathLike[str], roots: Roots, limit: int | None = None) -> str:
    return decode_utf8(read_bytes(path, roots, limit), path)


def parse_json(text: str, path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # Where the text runs out before the JSON does (a string is unterminated only at the end of the text).
        ends = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        cut = " (the file ends there: it looks truncated)" if ends else ""
        raise InvalidJson(
            path, f"{show(path)} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}{cut}"
        ) from None
    except RecursionError:
        raise InvalidJson(path, f"{show(path)} is not valid JSON: it nests too deeply") from None


def read_json(path: str | os.PathLike[str], roots: Roots, limit: int | None = JSON_LIMIT) -> Any:
    return parse_json(read_text(path, roots, limit), path)


def read_json_object(path: str | os.PathLike[str], roots: Roots, limit: int | None = JSON_LIMIT) -> dict[str, Any]:
    value = read_json(path, roots, limit)
    if not isinstance(value, dict):
        raise InvalidJson(path, f"{show(path)} must hold a JSON object, not {type(value).__name__}")
    return value
