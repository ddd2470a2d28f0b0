"""Text from the daemon made safe to print: control characters shown escaped, never sent to the terminal.

A job's name, its error text, a log line or an event come from the daemon, which took them from a spec or a
worker; an escape sequence in them (ESC [ ... , a carriage return, a bell) would move the cursor, rewrite what
is on screen or change the terminal's title. Every string the CLI has from the daemon passes through
`printable` once, where it arrives: server.cli.client for answers (`request`, `send_json`) and error bodies,
server.cli.sse for events, server.cli.follow for logs. Each control character (Unicode's Cc: C0, DEL, C1) and
each bidirectional override is shown as its escape (\\x1b, \\u202e); newlines and tabs stay, as the text's
own layout.
"""

from __future__ import annotations

import re
from typing import Any

# C0 but tab and newline, DEL, C1; and the bidirectional embeddings, overrides and isolates, which reorder what
# a line shows ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable_text(text: str) -> str:
    """`text` with every unsafe character escaped; newlines and tabs kept."""
    return _UNSAFE.sub(_escape, text)


def printable(value: Any) -> Any:
    """A decoded JSON value with every string in it (keys too) made printable."""
    if isinstance(value, str):
        return printable_text(value)
    if isinstance(value, list):
        return [printable(item) for item in value]
    if isinstance(value, dict):
        return {printable(key): printable(item) for key, item in value.items()}
    return value
