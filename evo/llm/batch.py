"""The batch backend: prompts go to a JSONL file in the OpenAI Batch API's input format, and
replies are read back from output files in its format, so a job can run where no endpoint
is reachable (or at the Batch API's discount).

In the batch directory:
  requests.jsonl     one line per pending request:
                     {"custom_id": <request hash>, "method": "POST", "url": "/v1/chat/completions", "body": {...}}
  replies*.jsonl     Batch API output lines: {"custom_id": ..., "response": {"status_code": 200, "body": {...}},
                     "error": null}; any number of files (e.g. one per finished batch).

A generation whose replies are not all there raises BatchPending; once the replies file is in
place, resuming the job proposes the same prompts (strategies are stateless, the request
hash is deterministic) and picks them up. `evo llm batch run DIR` answers the pending
requests against a reachable endpoint and writes a replies file.
"""
from __future__ import annotations

import json
from pathlib import Path

from evo.llm.completion import Completion, completion_from

CHAT_URL = "/v1/chat/completions"


class BatchPending(Exception):
    """Some requests wait for their replies; the job should pause, not fail."""

    def __init__(self, directory: Path, waiting: int):
        self.directory = directory
        self.waiting = waiting
        super().__init__(f"{waiting} LLM request(s) written to {directory / 'requests.jsonl'}; run them through the "
                         f"OpenAI Batch API (or `evo llm batch run {directory}`), put the output file in {directory} "
                         f"as replies*.jsonl, then resume the job")


class BatchBackend:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.label = f"batch:{self.directory}"

    @property
    def requests_path(self) -> Path:
        return self.directory / "requests.jsonl"

    def collect(self, bodies: dict[str, dict]):
        """Replies for the requests {hash: body} that have one; the rest are appended to
        requests.jsonl. Returns ({hash: Completion}, BatchPending or None)."""
        replies = read_replies(self.directory)
        answered = {}
        for h in bodies:
            if h not in replies:
                continue
            line = replies[h]
            response = line.get("response") or {}
            if line.get("error") or response.get("status_code") != 200:
                error = line.get("error") or (response.get("body") or {}).get("error") or response
                answered[h] = Completion(None, error=f"batch request failed: {json.dumps(error)[:500]}")
            else:
                answered[h] = completion_from(response.get("body") or {}, latency_s=None)
        waiting = {h: body for h, body in bodies.items() if h not in answered}
        if not waiting:
            return answered, None
        self.directory.mkdir(parents=True, exist_ok=True)
        already = {line["custom_id"] for line in read_jsonl(self.requests_path)}
        with self.requests_path.open("a") as f:
            for h, body in waiting.items():
                if h not in already:
                    f.write(json.dumps({"custom_id": h, "method": "POST", "url": CHAT_URL, "body": body}) + "\n")
        return answered, BatchPending(self.directory, len(waiting))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if text.strip():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
    return lines


def read_replies(directory: Path) -> dict[str, dict]:
    replies = {}
    for path in sorted(directory.glob("replies*.jsonl")):
        for line in read_jsonl(path):
            if "custom_id" not in line:
                raise ValueError(f"{path}: a line without custom_id is not Batch API output")
            replies[line["custom_id"]] = line
    return replies


def pending(directory: Path) -> list[dict]:
    """Requests in requests.jsonl without a reply yet."""
    replies = read_replies(directory)
    return [line for line in read_jsonl(directory / "requests.jsonl") if line["custom_id"] not in replies]


def run_pending(directory: Path, client) -> Path | None:
    """Answer the pending requests through `client` (an LLMClient with a reachable endpoint)
    and write them as one Batch API output file. Returns its path, or None if nothing waited."""
    import openai

    todo = pending(directory)
    if not todo:
        return None
    by_model = {e.model: e for e in client.settings.endpoints}
    out = directory / f"replies-{len(list(directory.glob('replies*.jsonl'))):04d}.jsonl"
    with out.open("w") as f:
        for n, line in enumerate(todo):
            endpoint = by_model.get(line["body"].get("model"), client.settings.endpoints[0])
            body = dict(line["body"], model=endpoint.model)
            try:
                response = {"status_code": 200, "body": client.raw_completion(endpoint, body)}
                error = None
            except openai.APIStatusError as e:
                response, error = {"status_code": e.status_code, "body": {}}, {"code": str(e.status_code), "message": str(e)}
            except openai.OpenAIError as e:
                response, error = None, {"code": type(e).__name__, "message": str(e)}
            f.write(json.dumps({"id": f"local_req_{n}", "custom_id": line["custom_id"], "response": response,
                                "error": error}) + "\n")
    return out


# --- the OpenAI Batch API (half price, answers within 24 h) ------------------------------------

def submit(directory: Path, client) -> str | None:
    """Upload the waiting requests as one Batch API job; returns its id (None if nothing waits).
    Submitted batches are listed in batches.json so `fetch` knows what to collect."""
    todo = [line for line in pending(directory) if line["custom_id"] not in _submitted_ids(directory)]
    if not todo:
        return None
    api = client.openai_client(client.settings.endpoints[0])
    payload = "".join(json.dumps(line) + "\n" for line in todo).encode()
    upload = api.files.create(file=("requests.jsonl", payload), purpose="batch")
    batch = api.batches.create(input_file_id=upload.id, endpoint=CHAT_URL, completion_window="24h")
    _write_batches(directory, [*_batches(directory), {"id": batch.id, "custom_ids": [line["custom_id"] for line in todo],
                                                      "fetched": False}])
    return batch.id


def fetch(directory: Path, client) -> list[tuple[str, str]]:
    """Download the output of every finished batch as replies-<batch id>.jsonl; returns
    (batch id, status) for the batches not fetched before."""
    api = client.openai_client(client.settings.endpoints[0])
    batches = _batches(directory)
    report = []
    for entry in batches:
        if entry["fetched"]:
            continue
        batch = api.batches.retrieve(entry["id"])
        report.append((entry["id"], batch.status))
        if batch.status not in ("completed", "expired", "cancelled", "failed"):
            continue
        # Expired or cancelled batches still return what finished; the rest lands in the error file.
        text = "".join(api.files.content(file_id).text for file_id in (batch.output_file_id, batch.error_file_id)
                       if file_id)
        (directory / f"replies-{entry['id']}.jsonl").write_text(text)
        entry["fetched"] = True
    _write_batches(directory, batches)
    return report


def _batches(directory: Path) -> list[dict]:
    path = directory / "batches.json"
    return json.loads(path.read_text()) if path.exists() else []


def _write_batches(directory: Path, batches: list[dict]) -> None:
    (directory / "batches.json").write_text(json.dumps(batches, indent=1))


def _submitted_ids(directory: Path) -> set[str]:
    return {cid for entry in _batches(directory) if not entry["fetched"] for cid in entry["custom_ids"]}
