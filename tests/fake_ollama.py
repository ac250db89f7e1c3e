"""A local fake of an Ollama server's /api/chat wire format (streamed NDJSON), for testing the ollama backend.

The model name picks the behaviour: "missing" answers 404, "broken" 500, "dies" drops the stream after two
tokens; any other model streams its scripted answer word by word (continuing a final assistant message).
`faults` are done first, one a request: "500" answers 500, "stall" says nothing for a minute, "drop" cuts the
stream after two tokens.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOllama:
    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.faults: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._json(200, {"version": "0.0.0-fake"}) if self.path == "/api/version" else self._json(404, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                model = body["model"]
                fault = fake.faults.pop(0) if fake.faults else ""
                if model == "missing":
                    return self._json(404, {"error": f'model "{model}" not found, try pulling it first'})
                if model == "broken" or fault == "500":
                    return self._json(500, {"error": "boom"})
                if fault == "stall":
                    time.sleep(60)
                    return None
                answer = fake.answers.get(model, "")
                last = body["messages"][-1]
                done_before = last["content"] if last["role"] == "assistant" else ""
                tokens = re.findall(r"\s*\S+", answer[len(done_before):])
                limit = (body.get("options") or {}).get("num_predict")
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                for n, token in enumerate(tokens):
                    if limit is not None and n >= limit:
                        return self._line(model, "", done=True, reason="length", count=n)
                    if (model == "dies" or fault == "drop") and n == 2:
                        self.wfile.flush()
                        self.connection.close()
                        return None
                    self._line(model, token)
                return self._line(model, "", done=True, reason="stop", count=len(tokens))

            def _line(self, model: str, content: str, done: bool = False, reason: str = "",
                      count: int = 0) -> None:
                part: dict[str, Any] = {"model": model, "created_at": "2026-01-01T00:00:00Z",
                                        "message": {"role": "assistant", "content": content}, "done": done}
                if done:
                    part |= {"done_reason": reason, "prompt_eval_count": 7, "eval_count": count}
                self.wfile.write((json.dumps(part) + "\n").encode())
                self.wfile.flush()

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
