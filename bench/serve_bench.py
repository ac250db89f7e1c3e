"""`flowrun serve` under load: many runs submitted over HTTP to one server process on a simulated backend.

N runs (default 2,000, AIOS's largest experiment) of a flow of S model steps are POSTed to /runs at once over 64
connections, and polled with GET /runs/{id} until each has ended: all of those pending in turn, then a pause of
--poll seconds (default 0.25; on a machine whose cores the clients share with the server, the polls compete with
the runs for them). The backend has k slots (default
8) and every call takes a fixed time (default 50 ms), so the ideal makespan is ceil(N*S/k) x that time (goal:
within 5%). Also printed: p50 / p99 latency of POST /runs and GET /runs/{id} under that load (goal p99 < 50 ms),
the server's peak RSS, and its RSS per run in flight (goal < 1 GB for 2,000).

The latency is measured twice. A probe, a client process of its own, sends requests all through the load: a GET
of a run of the load in flight every 0.1 s, and a POST every 0.5 s (of a flow with no model step, so that it
takes no slot), each timed from when it was due: what a client sees of a server under that load. The load's own
64 connections are also timed, but each of their requests waits behind the 63 others the load keeps in flight,
and for the clients' own event loop: that is the load's throughput more than the server's latency.

    python bench/serve_bench.py [--runs 2000] [--steps 10] [--slots 8] [--ms 50] [--clients 64] [--poll 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from lines import line_of_steps  # beside this file

PROBE = "flowrun: 1\nname: Probe\ndescription: No model step.\nsteps:\n  done: {kind: terminal, output: done}\n"


def probe(base: str) -> None:
    """The probe process: a GET every 0.1 s and a POST every 0.5 s until SIGTERM, each on a schedule of its own
    and timed from when it was due (a request sent late because the one before was slow counts its wait), then
    the latencies and any errors as JSON on stdout. It says "ready" first, once SIGTERM would be heard."""
    timed: dict[str, list[float]] = {"post": [], "get": [], "errors": []}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def every(seconds: float, kind: str, send: Any, client: httpx.Client) -> None:
        due = time.perf_counter()
        while not stop.wait(max(0.0, due - time.perf_counter())):
            try:
                if send(client):
                    timed[kind].append(time.perf_counter() - due)
            except Exception as exc:  # said at the end, with the figures
                timed["errors"].append(f"{kind}: {exc!r}")
            due += seconds
        client.close()

    in_flight: list[str] = []

    def post(client: httpx.Client) -> bool:
        client.post("/runs", json={"flow": "Probe"}).raise_for_status()
        return True

    def get(client: httpx.Client) -> bool:
        if not in_flight or random.random() < 0.1:  # which of the load's runs are in flight now (not timed)
            found = client.get("/runs", params={"flow": "Steps", "status": "running", "limit": 50}).json()
            in_flight[:] = [run["id"] for run in found]
            return False
        client.get(f"/runs/{random.choice(in_flight)}").raise_for_status()
        return True

    clients = [httpx.Client(base_url=base, timeout=120) for _ in range(2)]
    for client in clients:  # connected before the load starts: what is timed is the server, not a TCP handshake
        client.get("/healthz").raise_for_status()
    threads = [threading.Thread(target=every, args=(0.5, "post", post, clients[0])),
               threading.Thread(target=every, args=(0.1, "get", get, clients[1]))]
    print("ready", flush=True)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(timed))


def serve(port: int, folder: Path, slots: int, seconds: float) -> None:
    """The server process: the app over a service on the simulated backend, served as `flowrun serve` does."""
    from scheduler_bench import Simulated

    from engine.flow.manifest import load_tools
    from engine.interpreter.setup import kernel_for
    from engine.kernel.storage import Storage
    from engine.server.app import create_app
    from engine.server.catalog import load_catalog
    from engine.server.process import serve as serve_app
    from engine.service import Service

    flows = load_catalog([folder / "flows"])
    kernel = kernel_for([f.checked for f in flows.values()], Simulated(slots, seconds),
                        Storage(f"sqlite:///{folder / 'serve.db'}"))
    app = create_app(Service(kernel), flows, load_tools([]).tools)
    serve_app(app, "127.0.0.1", port)


async def load(base: str, runs: int, clients: int, pause: float) -> tuple[float, list[float], list[float], int]:
    """Submit `runs` runs at once through `clients` connections, and poll them until every one has ended: the
    makespan (from the first run's start to the last one's end, as the server stored them), the latencies of
    POST /runs and GET /runs/{id}, and the most runs in flight seen."""
    posts: list[float] = []
    gets: list[float] = []
    pending: set[str] = set()
    gate = asyncio.Semaphore(clients)
    peak = 0
    # A connection idle as long as the server keeps it (uvicorn: 5 s, httpx's default too) may be closed by the
    # server just as the client sends on it: the client lets it go first.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def timed(latencies: list[float], call: Any) -> httpx.Response:
            async with gate:
                started = time.perf_counter()
                response = await call
                latencies.append(time.perf_counter() - started)
                return response

        async def submit() -> None:
            nonlocal peak
            response = await timed(posts, client.post("/runs", json={"flow": "Steps"}))
            assert response.status_code == 201, response.text
            pending.add(response.json()["id"])
            peak = max(peak, len(pending))

        async def poll(run_id: str) -> None:
            run = (await timed(gets, client.get(f"/runs/{run_id}"))).json()
            if run["status"] != "running":
                assert run["status"] == "finished", run
                pending.discard(run_id)

        submitting = asyncio.gather(*(submit() for _ in range(runs)))
        while not submitting.done() or pending:
            await asyncio.gather(*(poll(run_id) for run_id in list(pending)))
            await asyncio.sleep(pause)
        await submitting
        stored = (await client.get("/runs", params={"limit": runs, "flow": "Steps"})).json()
    makespan = max(r["finished"] for r in stored) - min(r["created"] for r in stored)
    return makespan, posts, gets, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ms", type=float, default=50)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between two rounds of polls")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process's port
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # the probe process's server
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.folder, args.slots, args.ms / 1000)
        return
    if args.probe:
        probe(args.probe)
        return
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        (Path(tmp) / "flows").mkdir()
        (Path(tmp) / "flows" / "steps.yaml").write_text(line_of_steps(args.steps))
        (Path(tmp) / "flows" / "probe.yaml").write_text(PROBE)
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--folder", tmp,
                                   "--slots", str(args.slots), "--ms", str(args.ms)])
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    httpx.get(f"{base}/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            process = psutil.Process(server.pid)
            idle = process.memory_info().rss
            peak_rss, stop = [idle], threading.Event()

            def sample() -> None:
                while not stop.wait(0.1):
                    peak_rss.append(process.memory_info().rss)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            prober = subprocess.Popen([sys.executable, __file__, "--probe", base], stdout=subprocess.PIPE, text=True)
            assert prober.stdout is not None and prober.stdout.readline() == "ready\n", "the probe did not start"
            makespan, posts, gets, in_flight = asyncio.run(load(base, args.runs, args.clients, args.poll))
            prober.terminate()
            probed = json.loads(prober.communicate(timeout=180)[0])
            stop.set()
            sampler.join()
        finally:
            died = server.poll()
            server.terminate()
            server.wait(timeout=60)
            if died is not None:  # the load failed because the server stopped: say how
                print(f"the server exited with code {died} under the load", file=sys.stderr)
    ideal = math.ceil(args.runs * args.steps / args.slots) * args.ms / 1000

    def ms(values: list[float], q: int) -> float:  # within what was seen; a short run may have timed none
        if len(values) < 2:
            return values[0] * 1000 if values else math.nan
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000

    print(f"{args.runs} runs x {args.steps} model steps, {args.slots} slots, {args.ms:.0f} ms a call, "
          f"{args.clients} clients polling every {args.poll:g} s")
    print(f"  makespan {makespan:.2f} s; ideal {ideal:.2f} s: {makespan / ideal:.3f}x ideal (goal <= 1.05)")
    for error in probed["errors"][:5]:
        print(f"  probe error: {error}")
    print(f"  probe, {len(probed['post'])} POST and {len(probed['get'])} GET on their own schedules: POST /runs p50 "
          f"{ms(probed['post'], 50):.1f} ms, p99 {ms(probed['post'], 99):.1f} ms; GET /runs/ID p50 "
          f"{ms(probed['get'], 50):.1f} ms, p99 {ms(probed['get'], 99):.1f} ms (goal p99 < 50 ms)")
    print(f"  the load's {args.clients} connections, each request behind the others: POST /runs p50 "
          f"{ms(posts, 50):.1f} ms, p99 {ms(posts, 99):.1f} ms; GET /runs/ID p50 {ms(gets, 50):.1f} ms, p99 "
          f"{ms(gets, 99):.1f} ms")
    grown = max(peak_rss) - idle
    print(f"  server RSS idle {idle / 2**20:.0f} MiB, peak {max(peak_rss) / 2**20:.0f} MiB; at most {in_flight} "
          f"runs in flight: {grown / max(1, in_flight) / 2**10:.0f} KiB a run in flight "
          f"({grown / max(1, in_flight) * 2000 / 2**30:.2f} GiB for 2,000; goal < 1)")


if __name__ == "__main__":
    main()
