"""An OpenAI-compatible chat server for tests: 127.0.0.1, a random port, a thread.

It answers POST /v1/chat/completions with scripted replies (errors, delays, malformed
text) and then with `responder(body, n)`; it records every request body and the most
requests it ever had in flight at once. Driven through the real `openai` client.
The Batch API is there too (file upload, batch create/retrieve, file content): a batch
is answered by the same responder as soon as it is created.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    text: str | None = None
    status: int = 200
    delay_s: float = 0.0  # the server is slow (to exercise the client's timeout)
    headers: dict = field(default_factory=dict)
    finish_reason: str = "stop"


def rate_limited() -> Reply:
    return Reply(status=429, headers={"retry-after-ms": "10"})


def server_error() -> Reply:
    return Reply(status=500, headers={"retry-after-ms": "10"})


class FakeOpenAI:
    def __init__(self, responder: Callable[[dict, int], Reply] | None = None):
        self.responder = responder or (lambda body, n: Reply(f"reply {n}"))
        self.script: deque[Reply] = deque()
        self.requests: list[dict] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self.files: dict[str, str] = {}
        self.batches: dict[str, dict] = {}

    def __enter__(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                parts = self.path.strip("/").split("/")  # v1, batches, ID | v1, files, ID, content
                if parts[1:2] == ["batches"]:
                    self._send(200, fake.batches[parts[2]])
                elif parts[1:2] == ["files"]:
                    data = fake.files[parts[2]].encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/files"):
                    return self._upload(raw)
                if self.path.endswith("/batches"):
                    return self._batch(json.loads(raw))
                body = json.loads(raw)
                with fake._lock:
                    n = len(fake.requests)
                    fake.requests.append(body)
                    reply = fake.script.popleft() if fake.script else None
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                try:
                    reply = reply or fake.responder(body, n)
                    if reply.delay_s:
                        time.sleep(reply.delay_s)  # a slow server, not a synchronization
                    if reply.status != 200:
                        self._send(reply.status, {"error": {"message": f"fake error {reply.status}", "type": "fake"}},
                                   reply.headers)
                        return
                    prompt = sum(len(m["content"]) for m in body["messages"]) // 4
                    completion = len(reply.text or "") // 4
                    self._send(200, {
                        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                                     "message": {"role": "assistant", "content": reply.text}}],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                  "total_tokens": prompt + completion}}, reply.headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)
                finally:
                    with fake._lock:
                        fake._in_flight -= 1

            def _upload(self, raw: bytes):
                # multipart/form-data: the file is the part with a filename; its lines are JSON.
                part = next(p for p in raw.split(b"\r\n--") if b"filename=" in p)
                content = part.split(b"\r\n\r\n", 1)[1].decode()
                file_id = f"file-{len(fake.files)}"
                fake.files[file_id] = content
                self._send(200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": 0,
                                 "filename": "requests.jsonl", "purpose": "batch", "status": "processed"})

            def _batch(self, request: dict):
                lines = []
                for line in fake.files[request["input_file_id"]].splitlines():
                    item = json.loads(line)
                    with fake._lock:
                        n = len(fake.requests)
                        fake.requests.append(item["body"])
                    reply = fake.responder(item["body"], n)
                    lines.append({"id": f"batch_req_{n}", "custom_id": item["custom_id"], "error": None,
                                  "response": {"status_code": 200, "request_id": str(n), "body": {
                                      "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0,
                                      "model": item["body"]["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": reply.text}}],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}}})
                output_id = f"file-{len(fake.files)}"
                fake.files[output_id] = "".join(json.dumps(line) + "\n" for line in lines)
                batch_id = f"batch_{len(fake.batches)}"
                fake.batches[batch_id] = {
                    "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "status": "completed",
                    "input_file_id": request["input_file_id"], "completion_window": request["completion_window"],
                    "created_at": 0, "output_file_id": output_id, "error_file_id": None}
                self._send(200, fake.batches[batch_id])

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def env(self, **extra) -> dict[str, str]:
        """Settings pointing evo's LLM layer at this server."""
        return {"EVO_LLM_BASE_URL": self.base_url, "EVO_LLM_MODEL": "fake-model", "EVO_LLM_API_KEY": "test",
                "EVO_LLM_MAX_RETRIES": "3", "EVO_LLM_TIMEOUT": "5", **extra}
