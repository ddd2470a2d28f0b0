"""What the CLI reads and prints within bounds: job files whose aliases would expand past MAX_NODES values, numbers
JSON cannot hold, and server text with control characters, shown escaped."""

from __future__ import annotations

import re
import tracemalloc

import pytest

from server.cli.client import error_message
from server.cli.jobfiles import MAX_NODES, load_spec, parse_overrides
from server.cli.printable import printable, printable_text
from server.cli.sse import SseParser
from server.cli.words import event_line, status_text
from tests.helpers import REPO

LAUGHS = "name: lol\nlol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)
)  # 10**9 values, in 700 bytes


def test_a_billion_laughs_is_refused_naming_the_file_without_expanding_it(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    tracemalloc.start()
    with pytest.raises(SystemExit, match=rf"cannot read {path}: its aliases expand to more than {MAX_NODES:,} values"):
        load_spec(path, [])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20  # megabytes, not the 1.15 GB it took to expand


def test_an_alias_that_contains_itself_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: x\nloop: &a [1, *a]\n")
    with pytest.raises(SystemExit, match="contains it"):
        load_spec(path, [])


def test_anchors_within_the_bound_load_as_before(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("base: &b {lora_rank: 8, lora_alpha: 16}\nname: x\nother: *b\nmerged:\n  <<: *b\n  lora_rank: 4\n")
    assert load_spec(path, []) == {
        "base": {"lora_rank": 8, "lora_alpha": 16},
        "name": "x",
        "other": {"lora_rank": 8, "lora_alpha": 16},
        "merged": {"lora_rank": 4, "lora_alpha": 16},
    }


@pytest.mark.parametrize("path", sorted((REPO / "configs/jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_job_files_load(path):
    assert load_spec(path, [])["name"]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "[1, .inf]"])
def test_set_a_number_that_is_not_finite_names_the_key(value):
    with pytest.raises(SystemExit, match=rf"--set 'learning_rate={re.escape(value)}': learning_rate.* is not a finite"):
        parse_overrides([f"learning_rate={value}"])


def test_a_job_file_with_a_number_that_is_not_finite_names_the_file_and_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nlr_scheduler_kwargs:\n  power: .inf\n")
    with pytest.raises(SystemExit, match=rf"{path}: lr_scheduler_kwargs.power is inf, which is not a finite number"):
        load_spec(path, [])


def test_set_with_unreadable_yaml_names_the_key():
    with pytest.raises(SystemExit, match="the value of name is not readable YAML"):
        parse_overrides(["name=[unclosed"])


ESC = "\x1b[2J\x1b]0;pwned\x07"


def test_control_characters_are_escaped_and_layout_kept():
    assert printable_text(f"a{ESC}\rb\u202ec\n\td\x9b") == "a\\x1b[2J\\x1b]0;pwned\\x07\\x0db\\u202ec\n\td\\x9b"
    escaped = "\\x1b[2J\\x1b]0;pwned\\x07"
    assert printable({f"k{ESC}": [f"v{ESC}", 1, None]}) == {f"k{escaped}": [f"v{escaped}", 1, None]}


def test_status_events_and_errors_print_no_control_character():
    job = printable(
        {"id": 1, "name": "j", "state": "failed", "gpus": 0, "reason": f"boom{ESC}", "attempts": [], "progress": None}
    )
    assert "\x1b" not in status_text(job) and "boom\\x1b[2J" in status_text(job)
    parser = SseParser()
    lines = ["id: 3", "event: end", 'data: {"job_id": 1, "record": {"error": "boom\\u001b[2J"}}', ""]
    lines += ["id: 4", f"event: odd{ESC}", "data: x", ""]
    end, odd = [event_line(e) for e in map(parser.feed, lines) if e is not None]
    assert "\x1b" not in end and "error boom\\x1b[2J" in end
    assert "\x1b" not in odd and "odd\\x1b[2J" in odd
    body = printable({"detail": f"bad{ESC}", "errors": [{"field": f"k{ESC}", "message": "m"}]})
    assert "\x1b" not in error_message(422, body, "/jobs", False)
