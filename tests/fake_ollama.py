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
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOllama:
    """`answers` by model name (or `answer`, given a request's body, decides); `slots` (its OLLAMA_NUM_PARALLEL):
    the generations it runs at once, which it counts (`peak`: the most at once) and holds to (one more is refused
    with 503 and counted in `overrun`); `token_delay` seconds a token."""

    def __init__(self, answers: dict[str, str], *, answer: Callable[[dict[str, Any]], str] | None = None,
                 slots: int | None = None, token_delay: float = 0.0) -> None:
        self.answers = answers
        self.answer, self.slots, self.token_delay = answer, slots, token_delay
        self.requests: list[dict[str, Any]] = []
        self.faults: list[str] = []
        self.generating = self.peak = self.overrun = 0  # overrun: requests past its slots, refused
        self._count = threading.Lock()
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
                with fake._count:
                    fake.generating += 1
                    fake.peak = max(fake.peak, fake.generating)
                    over = fake.slots is not None and fake.generating > fake.slots
                    fake.overrun += over
                if over:  # more than it runs at once: a real server would queue it; this one says so
                    with fake._count:
                        fake.generating -= 1
                    return self._json(503, {"error": f"more than {fake.slots} generations at once"})
                try:
                    return self._generate(body, model, fault)
                finally:
                    with fake._count:
                        fake.generating -= 1

            def _generate(self, body: dict[str, Any], model: str, fault: str) -> None:
                answer = fake.answer(body) if fake.answer else fake.answers.get(model, "")
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
                    time.sleep(fake.token_delay)
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
