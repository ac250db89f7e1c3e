"""A pool of model hosts (engine.llm.pool) whose slots are leased through the run database (engine.kernel.slots),
against fake Ollama servers speaking its wire format that count the generations they run at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.flow.hosts import HostsError, read_hosts
from engine.kernel.slots import SlotLeases
from engine.kernel.storage import Storage
from engine.kernel.tables import ModelSlotRow
from engine.llm.base import ModelUnavailable, Request
from engine.llm.pool import Host, PoolBackend
from tests.fake_ollama import FakeOllama

ANSWER = "one two three four five six"


@pytest.fixture
def fakes() -> Iterator[list[FakeOllama]]:
    """Two Ollama servers: one running 2 generations at once, one running 1."""
    made = [FakeOllama({"m": ANSWER}, slots=2, token_delay=0.01), FakeOllama({"m": ANSWER}, slots=1, token_delay=0.01)]
    yield made
    for fake in made:
        fake.close()


def pool(storage: Storage, fakes: list[FakeOllama], **options: float) -> PoolBackend:
    hosts = [Host(fake.url, fake.slots or 1) for fake in fakes]
    return PoolBackend("m", hosts, SlotLeases(storage, hosts, lease=options.pop("lease", 30.0)), **options)


def ask() -> Request:
    return Request([{"role": "user", "content": "count"}])


def test_no_host_runs_more_than_its_slots_for_all_workers_and_the_least_loaded_gets_work(
        tmp_path: Path, fakes: list[FakeOllama]) -> None:
    """Two workers' pools (each its own leases, as in two processes) share the slots through one database."""
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    workers = [pool(storage, fakes), pool(storage, fakes)]

    async def main() -> list[str]:
        calls = [worker.generate(ask(), lambda _: False) for worker in workers for _ in range(9)]
        return [result.text for result in await asyncio.gather(*calls)]

    assert asyncio.run(main()) == [ANSWER] * 18
    assert [(fake.peak, fake.overrun) for fake in fakes] == [(2, 0), (1, 0)]  # each used to its slots, never past them
    assert {row.holder for row in storage.rows(ModelSlotRow)} == {None}  # every slot given back


def test_a_failing_host_is_left_out_then_tried_again(tmp_path: Path, fakes: list[FakeOllama]) -> None:
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    backend = pool(storage, fakes, retry_after=0.5)
    fakes[0].faults = ["500"] * 5  # the least-loaded host, first asked, fails
    first = asyncio.run(backend.generate(ask(), lambda _: False))
    assert first.text == ANSWER and len(fakes[0].requests) == 1 and len(fakes[1].requests) == 1
    asyncio.run(backend.generate(ask(), lambda _: False))
    assert len(fakes[0].requests) == 1  # left out
    time.sleep(0.6)
    asyncio.run(backend.generate(ask(), lambda _: False))
    assert len(fakes[0].requests) == 2  # tried again (it fails again: the other one answers)
    fakes[1].faults = ["500"] * 5
    with pytest.raises(ModelUnavailable, match="answered 500"):  # each host tried once: the kernel backs off
        asyncio.run(backend.generate(ask(), lambda _: False))


def test_a_slot_held_by_a_process_that_died_is_taken_once_its_lease_ran_out(tmp_path: Path,
                                                                               fakes: list[FakeOllama]) -> None:
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    backend = pool(storage, fakes[1:], lease=30.0)  # the host with one slot
    with storage.engine.begin() as db:  # held by a worker killed mid-generation, for one more second
        db.execute(ModelSlotRow.__table__.update().values(holder="dead:1", expires=time.time() + 1))
    started = time.monotonic()
    assert asyncio.run(backend.generate(ask(), lambda _: False)).text == ANSWER
    assert time.monotonic() - started >= 0.9


def test_a_generation_suspended_on_a_host_that_is_gone_resumes_on_another(tmp_path: Path,
                                                                          fakes: list[FakeOllama]) -> None:
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    backend = pool(storage, fakes)
    seen: list[str] = []
    first = asyncio.run(backend.generate(ask(), lambda token: seen.append(token) or len(seen) == 2))
    assert first.finish == "suspended" and first.snapshot is not None and len(fakes[0].requests) == 1
    fakes[0].close()  # its host is gone
    rest = asyncio.run(backend.generate(ask(), lambda _: False, first.snapshot))
    assert rest.text == ANSWER and fakes[1].requests[-1]["messages"][-1] == {"role": "assistant",
                                                                             "content": first.text}


def test_a_generation_cut_off_midway_goes_on_from_its_text_on_another_host(tmp_path: Path,
                                                                          fakes: list[FakeOllama]) -> None:
    """Its host broke the stream off after two tokens: the next host goes on from them, not from nothing, and the
    caller hears each token once (it heard the first two again, and counted them twice)."""
    backend = pool(Storage(f"sqlite:///{tmp_path / 'runs.db'}"), fakes)
    fakes[0].faults = ["drop"]
    heard: list[str] = []
    result = asyncio.run(backend.generate(ask(), lambda token: heard.append(token) or False))
    assert (result.text, "".join(heard), result.completion_tokens) == (ANSWER, ANSWER, 6)
    assert fakes[1].requests[-1]["messages"][-1] == {"role": "assistant", "content": "one two"}


def test_a_one_host_pool_is_asked_again_after_a_passing_fault(tmp_path: Path, fakes: list[FakeOllama]) -> None:
    """Every host failed lately: none is left out (the kernel's backoff paces the tries), so the next try reaches
    the host again."""
    backend = pool(Storage(f"sqlite:///{tmp_path / 'runs.db'}"), fakes[1:])
    fakes[1].faults = ["500"]
    with pytest.raises(ModelUnavailable):
        asyncio.run(backend.generate(ask(), lambda _: False))
    assert asyncio.run(backend.generate(ask(), lambda _: False)).text == ANSWER


def test_a_generation_waiting_for_a_slot_goes_to_no_host_that_failed_meanwhile(tmp_path: Path,
                                                                              fakes: list[FakeOllama]) -> None:
    fakes[0].slots = 1
    backend = pool(Storage(f"sqlite:///{tmp_path / 'runs.db'}"), fakes)
    fakes[0].faults = ["", "500"]  # its first generation is fine, its second fails: it is left out

    async def three() -> list[str]:
        return [r.text for r in await asyncio.gather(*(backend.generate(ask(), lambda _: False) for _ in range(3)))]

    assert asyncio.run(three()) == [ANSWER] * 3
    assert len(fakes[0].requests) <= 2  # no third request within retry_after


def test_a_lease_not_renewed_stops_its_generation_and_a_release_frees_only_its_own_slot(
        tmp_path: Path, fakes: list[FakeOllama]) -> None:
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    hosts = [Host(fakes[0].url, 2)]
    leases = SlotLeases(storage, hosts, lease=0.6)

    async def main() -> None:  # one process, two generations: no third slot
        async with leases.hold(lambda: hosts), leases.hold(lambda: hosts), leases.hold(lambda: hosts):
            raise AssertionError("a third slot")

    async def first_released_second_kept() -> list[object]:
        held: list[object] = []
        async with leases.hold(lambda: hosts):
            async with leases.hold(lambda: hosts):
                pass  # the second generation gives its slot back
            held = [r.holder for r in storage.rows(ModelSlotRow) if r.holder]
        return held

    assert len(asyncio.run(first_released_second_kept())) == 1
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(main(), 1.0))

    async def renewal_lost() -> None:
        async with leases.hold(lambda: hosts):
            with storage.engine.begin() as db:  # another process took it once it ran out (a renewal failed)
                db.execute(ModelSlotRow.__table__.update().values(holder="other:1", expires=time.time() + 60))
            await asyncio.sleep(2)

    with pytest.raises(ModelUnavailable, match="could not be renewed"):
        asyncio.run(renewal_lost())


def test_a_slot_taken_while_its_caller_was_cancelled_is_given_back(tmp_path: Path, fakes: list[FakeOllama],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Storage(f"sqlite:///{tmp_path / 'runs.db'}")
    hosts = [Host(fakes[0].url, 2)]
    leases = SlotLeases(storage, hosts)
    real = leases._take_now

    def slow(holder: str, urls: list[str]) -> object:
        time.sleep(0.3)
        return real(holder, urls)

    monkeypatch.setattr(leases, "_take_now", slow)

    async def cancelled() -> None:
        waiting = asyncio.ensure_future(leases.hold(lambda: hosts).__aenter__())
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(cancelled())
    assert {row.holder for row in storage.rows(ModelSlotRow)} == {None}


@pytest.mark.parametrize(("text", "where"), [
    ("hosts: []\n", "1:1"),
    ("hosts:\n  - {url: http://a:11434, slots: 0}\n", "2:34"),
    ("hosts:\n  - {url: http://a:11434, slots: 2}\n  - {url: 'http://a:11434/', slots: 1}\n", "3:11")])
def test_a_hosts_file_with_a_problem_is_refused_at_its_line(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "hosts.yaml").write_text(text)
    with pytest.raises(HostsError, match=f"hosts.yaml:{where}: "):
        read_hosts(tmp_path / "hosts.yaml")
