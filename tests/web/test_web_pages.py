"""Server-rendered pages against a real database (SQLite and PostgreSQL), and the SVG plot."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from evo.leaderboard import GenerationPoint
from evo.web.plots import generation_plot


def rows_of(html: str, task: str, device: str = "NVIDIA H200") -> list[str]:
    """The <tr> bodies of one task's leaderboard table for one device."""
    table = re.search(rf'<table class="leaderboard" data-task="{task}" data-device="{device}">(.*?)</table>',
                      html, re.S).group(1)
    return re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S)


def candidate_order(rows: list[str]) -> list[int]:
    return [int(re.search(r'href="/candidates/(\d+)"', r).group(1)) for r in rows]


def test_leaderboard_lists_best_kernels_per_task(client, data):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    softmax = rows_of(r.text, "softmax")
    assert candidate_order(softmax) == [data["fastest"], data["fast"], data["seed"]]
    top = softmax[0]
    for value in ("2.00×", "1.60×", "33%", "NVIDIA H200", "tune", f'href="/jobs/{data["job_a"]}"', "2026-11-01 12:04"):
        assert value in top, value
    assert "qwen3-coder" in "".join(rows_of(r.text, "rmsnorm"))
    assert data["broken"] not in candidate_order(softmax) and data["pending"] not in candidate_order(softmax)


def test_leaderboard_filters_and_sorts(client, data):
    only_rms = client.get("/", params={"task": "rmsnorm"}).text
    assert 'data-task="softmax"' not in only_rms and 'data-task="rmsnorm"' in only_rms
    cpu = client.get("/", params={"gpu": "cpu-interpreter"}).text
    assert candidate_order(rows_of(cpu, "rmsnorm", "cpu-interpreter")) == [data["cpu"]]
    assert 'data-task="softmax"' not in cpu and 'data-device="NVIDIA H200"' not in cpu
    ascending = client.get("/", params={"task": "softmax", "sort": "speedup_eager", "order": "asc"}).text
    assert candidate_order(rows_of(ascending, "softmax")) == [data["seed"], data["fast"], data["fastest"]]
    by_date = client.get("/", params={"task": "softmax", "sort": "date", "order": "asc"}).text
    assert candidate_order(rows_of(by_date, "softmax")) == [data["seed"], data["fast"], data["fastest"]]
    assert 'aria-sort="ascending"' in by_date
    empty = client.get("/", params={"task": "nothing"})
    assert empty.status_code == 200 and "No correct kernel yet for this filter" in empty.text


def test_leaderboard_bad_parameter_is_an_html_422(client):
    r = client.get("/", params={"sort": "random"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert "sort" in re.search(r'id="error-message">(.*?)<', r.text, re.S).group(1)


def test_job_page_shows_progress_plot_and_population(client, data):
    r = client.get(f"/jobs/{data['job_a']}")
    assert r.status_code == 200
    assert re.search(r'id="evaluated">4 of 5 proposed<', r.text)
    assert re.search(r'id="valid-rate">75% \(3 valid\)<', r.text)
    assert re.search(r'id="best-speedup">2.00×<', r.text)
    assert "http-equiv=\"refresh\"" not in r.text and "/cancel" not in r.text  # done: no refresh, no cancel
    svg = re.search(r"<svg.*?</svg>", r.text, re.S).group(0)
    ET.fromstring(svg)  # well-formed
    assert svg.count('<rect class="valid-rate"') == 3 and '<polyline class="best-speedup"' in svg
    assert "compile_error" in r.text and "BLOCK must be a power of 2" in r.text  # the verdict and its error
    assert r.text.count('class="verdict verdict-') == 5


def test_live_job_page_refreshes_and_offers_cancel(client, data):
    r = client.get(f"/jobs/{data['job_b']}")
    assert '<meta http-equiv="refresh" content="5">' in r.text
    assert f'href="/jobs/{data["job_b"]}/cancel"' in r.text
    form = client.get(f"/jobs/{data['job_b']}/cancel").text  # the form lives on a page that does not reload
    assert f'action="/jobs/{data["job_b"]}/cancel"' in form and 'name="token"' in form and "refresh" not in form


def test_cancel_form(client, session_factory, token):
    from db.models import Job
    with session_factory() as s:
        job = Job(task="softmax", strategy="tune", budget=2, state="queued")
        s.add(job)
        s.commit()
    wrong = client.post(f"/jobs/{job.id}/cancel", data={"token": "nope"})
    assert wrong.status_code == 403 and "invalid API token" in wrong.text
    missing = client.post(f"/jobs/{job.id}/cancel", data={})
    assert missing.status_code == 401
    ok = client.post(f"/jobs/{job.id}/cancel", data={"token": token}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == f"/jobs/{job.id}?message=cancelled"
    page = client.get(ok.headers["location"])
    assert re.search(r'id="job-state">cancelled<', page.text) and "refresh" not in page.text


def test_candidate_page(client, data):
    r = client.get(f"/candidates/{data['rms_llm']}")
    assert r.status_code == 200
    assert '<div class="highlight">' in r.text and '<span class="k">def</span>' in r.text  # pygments
    assert re.search(r'id="verdict">correct<', r.text)
    assert "M=4096" in r.text and "0.25 ms" in r.text  # per-shape timings
    assert "You write Triton kernels." in r.text and "Make RMSNorm faster than 0.40 ms." in r.text  # the prompt
    assert "name: fused rmsnorm" in r.text and "1200 + 800 tokens" in r.text  # the reply
    assert f'href="/candidates/{data["rms_seed"]}"' in r.text  # its parent


def test_candidate_lineage_and_error(client, data):
    broken = client.get(f"/candidates/{data['broken']}").text
    assert "CompilationError: BLOCK must be a power of 2" in broken
    assert "No LLM call: made by tune." in broken
    fast = client.get(f"/candidates/{data['fast']}").text
    parents, children = fast.split("<h3>Parents</h3>")[1].split("<h3>Children</h3>")
    assert f'/candidates/{data["seed"]}"' in parents
    assert f'/candidates/{data["fastest"]}"' in children and f'/candidates/{data["pending"]}"' in children
    grandchild = client.get(f"/candidates/{data['fastest']}").text.split("<h3>Parents</h3>")[1].split("<h3>Children")[0]
    assert grandchild.index(f'/candidates/{data["fast"]}"') < grandchild.index(f'/candidates/{data["seed"]}"')


@pytest.mark.parametrize("path, status", [("/jobs/999999", 404), ("/candidates/999999", 404), ("/jobs/abc", 422),
                                          ("/nowhere", 404)])
def test_page_errors_are_html(client, path, status):
    r = client.get(path)
    assert r.status_code == status and "<h1>" + str(status) + "</h1>" in r.text


def test_jobs_page(client, data):
    r = client.get("/jobs")
    assert r.status_code == 200 and f'href="/jobs/{data["job_a"]}"' in r.text and "75%" in r.text


def test_plot_scales_and_marks_points():
    points = [GenerationPoint(g, 1, 1 if v is not None else 0, 1 if v else 0, None, None, s, None, None)
              for g, s, v in [(0, 1.0, 1.0), (1, None, None), (2, 3.0, 0.5)]]
    svg = generation_plot(points)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}rect")) == 2  # no bar where nothing was evaluated
    circles = root.findall(f"{ns}circle")
    assert len(circles) == 2
    y = [float(c.get("cy")) for c in circles]
    assert y[1] < y[0]  # 3x is drawn above 1x
    assert "no generation evaluated yet" in generation_plot([])
