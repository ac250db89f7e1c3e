"""HTTP for tool code (httpx), within what its manifest allows: only the hosts of its `hosts` (every redirect
checked the same way), a timeout per request, a few tries after a 429 or a 5xx (waiting as Retry-After says, within
bounds), and at most MAX_RESPONSE bytes of an answer. Every failure is a ToolError whose message says what to do.

The allow-list binds tool code that reaches the network through here, as the bundled tools do; code that opens
sockets itself is not confined (a worker process is no network sandbox).
"""

from __future__ import annotations

import os
import random
import time
import urllib.parse
from collections.abc import Collection, Iterator
from typing import Any

import httpx

from engine.kernel.tool_code import ToolError, ToolTimeout, reachable, running

MAX_RESPONSE = 1 << 20  # bytes of an answer read, at most
TRIES = 3  # after a 429 or a 5xx, or a connection that failed
WAIT = 0.5  # seconds before the second try; doubled after, with full jitter
LONGEST_WAIT = 5.0  # seconds a Retry-After may make it wait
TIMEOUT = 10.0  # seconds a request may take (the tool's own timeout bounds the whole call)
RETRIED = frozenset({429, 500, 502, 503, 504})


def variable(name: str, what: str) -> str:
    """The value of environment variable `name` (`what` it is, for the message when it is not set)."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise ToolError(f"tool {running.get()} needs {what}: set the environment variable {name}")
    return value


def allowed(host: str, hosts: tuple[str, ...] | None = None) -> bool:
    """Whether `host` is one the running tool's manifest lists (a name, *.name for it and its subdomains, or
    $VARIABLE for what that variable holds: a comma-separated list of URLs, each standing for its host, and of names
    and *.names)."""
    host = host.lower().rstrip(".")
    for entry in _entries(reachable.get() if hosts is None else hosts):
        if host == entry.removeprefix("*.") or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def _entries(hosts: tuple[str, ...]) -> Iterator[str]:
    """The names and *.names that `hosts` stand for, each $VARIABLE read (one that is not set stands for none)."""
    for entry in hosts:
        for item in os.environ.get(entry[1:], "").split(",") if entry.startswith("$") else [entry]:
            item = item.strip()  # a URL, or a name (a port or path after it is no part of the host)
            if name := (urllib.parse.urlsplit(item if "://" in item else "//" + item).hostname or "").rstrip("."):
                yield name  # never the empty host


def get(url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None, *,
        read: Collection[int] = ()) -> httpx.Response:
    """The answer to `GET url` (with `params`), read whole (at most MAX_RESPONSE bytes), once it is a success:
    tried again after a 429, a 5xx or a failed connection, a few times; ToolError when it stays a failure, or when
    the URL or a redirect leads to a host the tool may not reach. An error status in `read` is answered as it came
    (neither tried again nor an error here), for a caller whose API explains its errors in the body."""
    for attempt in range(1, TRIES + 1):
        try:
            with httpx.Client(timeout=TIMEOUT, follow_redirects=True, max_redirects=5,
                              event_hooks={"request": [_check_host]}) as client, \
                    client.stream("GET", url, params=params, headers=headers) as response:
                if response.status_code in RETRIED and response.status_code not in read and attempt < TRIES:
                    time.sleep(_wait(attempt, response.headers.get("retry-after")))
                    continue
                if response.is_error and response.status_code not in read:
                    raise ToolError(f"{_host(url)} answered {response.status_code} {response.reason_phrase}"
                                    + (f" after {attempt} tries" if attempt > 1 else ""))
                body = b"".join(_capped(response))
                return httpx.Response(response.status_code, headers=response.headers, content=body,
                                      request=response.request)
        except httpx.TimeoutException:
            raise ToolTimeout(f"{_host(url)} did not answer within {TIMEOUT:g} s") from None
        except httpx.TooManyRedirects:
            raise ToolError(f"{_host(url)} redirected more than 5 times") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if attempt == TRIES:
                raise ToolError(f"{_host(url)} cannot be reached: {exc}") from None
            time.sleep(_wait(attempt, None))
        except httpx.InvalidURL as exc:
            raise ToolError(f"not a URL the tool can get: {exc}") from None
    raise AssertionError("unreachable: the last try returns or raises")


def get_json(url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
    """The JSON an API answers `GET url` with (as `get`); ToolError when it is not JSON."""
    response = get(url, params, {"Accept": "application/json", **(headers or {})})
    try:
        return response.json()
    except ValueError:
        raise ToolError(f"{_host(url)} did not answer JSON") from None


def _check_host(request: httpx.Request) -> None:
    """Refuse a request (the first, or a redirect's) to a host the running tool's manifest does not list."""
    host = request.url.host
    if request.url.scheme not in ("http", "https") or not allowed(host):
        listed = ", ".join(reachable.get()) or "none"
        raise ToolError(f"tool {running.get()} may not reach {host or request.url} (its manifest's hosts: "
                        f"{listed})")


def _capped(response: httpx.Response) -> Any:
    read = 0
    for chunk in response.iter_bytes():
        read += len(chunk)
        if read > MAX_RESPONSE:
            raise ToolError(f"{response.url.host} answered more than {MAX_RESPONSE:,} bytes")
        yield chunk


def _wait(attempt: int, retry_after: str | None) -> float:
    """Seconds before try `attempt` + 1: as Retry-After says (seconds, within LONGEST_WAIT), else backoff."""
    if retry_after is not None and retry_after.strip().isdigit():
        return min(float(retry_after), LONGEST_WAIT)
    return random.uniform(0, min(LONGEST_WAIT, WAIT * 2 ** (attempt - 1)))


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url
