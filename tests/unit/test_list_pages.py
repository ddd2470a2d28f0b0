"""`ftq list`'s paging (server.cli.tables): pages of GET /jobs read to the end, and the line under the table."""

from __future__ import annotations

from typing import Any

from server.cli.tables import job_pages, page_footer


def test_the_footer_says_how_many_there_are_and_how_to_see_more() -> None:
    assert page_footer(1006, 0, 50, None) == (
        "1,006 jobs, the newest first: showing 1-50; --offset 50 for the next, --all for every one"
    )
    assert page_footer(1006, 1000, 6, None) == "1,006 jobs, the newest first: showing 1,001-1,006"
    assert page_footer(3, 0, 3, None) == "3 jobs, the newest first"
    assert page_footer(1, 0, 1, "running") == "1 running job, the newest first"
    assert page_footer(0, 0, 0, "queued") == "no queued jobs"
    assert page_footer(7, 50, 0, None) == "7 jobs; none after --offset 50"


def test_all_reads_page_after_page_and_lists_a_job_once_when_one_is_submitted_meanwhile() -> None:
    jobs = list(range(2500, 0, -1))  # ids, the newest first
    asked: list[dict[str, Any]] = []

    def fetch(params: dict[str, Any]) -> dict[str, Any]:
        asked.append(params)
        if len(asked) == 2:
            jobs.insert(0, 2501)  # submitted between two pages: the rest move down by one
        page = jobs[params["offset"] : params["offset"] + params["limit"]]
        return {"data": [{"id": i} for i in page], "count": len(jobs)}

    listed, count = job_pages(fetch, None, 0, None)
    # Every job there was when it began, each once (the one pushed to the next page is not listed twice).
    assert [job["id"] for job in listed] == list(range(2500, 0, -1)) and count == 2501
    assert [p["limit"] for p in asked] == [1000, 1000, 1000] and all(p["order"] == "newest" for p in asked)
    first, _ = job_pages(fetch, "queued", 10, 5)
    assert len(first) == 5 and asked[-1] == {"order": "newest", "offset": 10, "limit": 5, "state": "queued"}
