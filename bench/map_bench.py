"""What a map step gains: its items' model calls shared out by the scheduler, against the ideal and the loop.

1. A map of 16 items, each a sub-flow making one model call that takes 50 ms on a simulated backend with k slots
   (1, 4, 8): the run's makespan against the ideal ceil(16/k) x 50 ms (goal: within 5%), every item a child run
   stored as a run, every step committed.
2. flows/math_sheet.yaml (math_agent solving each of 8 independent problems, a map) on the embedded model
   (SmolLM2-135M) with 1 and 4 slots, against the sequential loop it replaces (a flow calling math_agent for one
   problem after another), all measured in this run: the best of 3 runs of each on one kernel (the first starts the
   calculator's worker processes and warms up the model's prompt cache). Skipped with --no-model.

    python bench/map_bench.py [--items 16] [--seconds 0.05] [--slots 1 4 8] [--problems 8] [--no-model]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from pathlib import Path

from scheduler_bench import Simulated

from engine.flow.manifest import load_tools
from engine.flow.validate import CheckedFlow, check_flow_text, load_flow
from engine.interpreter.setup import kernel_for
from engine.interpreter.walk import run_flow
from engine.kernel.kernel import Kernel
from engine.kernel.storage import Storage

ROOT = Path(__file__).resolve().parents[1]

MAP = """\
flowrun: 1
name: MapBench
inputs:
  n: {type: integer}
steps:
  each:
    kind: map
    items: "{{ range(inputs.n) | list }}"
    max_items: 10000
    steps:
      call: {kind: process, instruction: "Item {{ item }}.", next: said}
      said: {kind: terminal, output: "{{ steps.call.output }}"}
    next: done
  done: {kind: terminal, output: "{{ steps.each.output | length }}"}
"""

# The loop a map replaces: one problem after another, counted with visits.
LOOP = """\
flowrun: 1
name: MathLoop
inputs:
  problems: {type: array, items: {type: string}}
agents: [%(math)s]
limits: {max_steps: 100}
steps:
  solve:
    kind: agent
    flow: %(math)s
    inputs: {problem: "{{ inputs.problems[visits.solve - 1] }}"}
    next: more
  more:
    kind: decision
    question: Are there problems left?
    decide: "{{ 'yes' if visits.solve < inputs.problems | length else 'no' }}"
    branches: {"yes": solve, "no": done}
  done: {kind: terminal, output: "{{ steps.solve.output }}"}
"""

PROBLEMS = ["What is 20% of 300?", "How many minutes are there in 3.5 hours?",
            "A rectangle is 7 m long and 2 m wide. What is its area in square metres?",
            "What is the average of 3, 9 and 12?", "How many grams are there in 4.5 kg?",
            "A car drives at 60 km/h for 3 hours. How far does it go, in km?",
            "5 friends share a bill of $120 equally. How much does each friend pay?",
            "What is the square root of 144?"]


async def map_makespan(items: int, slots: int, seconds: float) -> tuple[float, int]:
    """Seconds a run of MAP over `items` takes with k `slots` of `seconds` a call; and the runs it stored."""
    with tempfile.TemporaryDirectory() as tmp:
        checked = check_flow_text(MAP, f"{tmp}/map.yaml", load_tools([]).tools)
        storage = Storage(f"sqlite:///{tmp}/bench.db")
        kernel = Kernel(Simulated(slots, seconds), storage, workspaces=Path(tmp))
        # once before, as a process serving runs would have: its templates compiled, its database's first write
        await run_flow(kernel, checked.compiled, {"n": 1}, file=f"{tmp}/map.yaml")
        start = time.perf_counter()
        outcome = await run_flow(kernel, checked.compiled, {"n": items}, file=f"{tmp}/map.yaml")
        took = time.perf_counter() - start
        assert outcome.answer == items, outcome.error
        runs = 1 + len(storage.children([outcome.run_id]))
        storage.close()
        return took, runs


def math_sheet(problems: int, slot_counts: list[int]) -> None:
    from engine.llm.auto import open_backend

    sheet = ROOT / "flows" / "math_sheet.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        loop_file = Path(tmp) / "math_loop.yaml"
        loop_file.write_text(LOOP % {"math": "math_agent"})
        os.environ["FLOWRUN_FLOWS"] = str(ROOT / "flows")  # where the loop finds math_agent by name
        flows = {"loop": (load_flow(loop_file), loop_file), "map": (load_flow(sheet), sheet)}
        inputs = {"problems": (PROBLEMS * math.ceil(problems / len(PROBLEMS)))[:problems]}
        print(f"math_sheet: {problems} problems on the embedded model (each: math_agent's carried expression, the "
              "calculator, and one model call that checks it)")
        for slots in slot_counts:
            backend = open_backend("embedded", "smollm2-135m", slots=slots)
            best = {}
            for name, (checked, file) in flows.items():
                # one kernel for its runs, as a process serving them has: the first run starts the calculator's
                # worker processes and warms the model's prompt cache; the best of the 3 counts
                storage = Storage(f"sqlite:///{tmp}/{name}{slots}.db")
                kernel = kernel_for([checked], backend, storage, workspaces=Path(tmp))
                best[name] = asyncio.run(_best(kernel, checked, inputs, str(file)))
                storage.close()
            print(f"  --slots {slots}: loop {best['loop']:6.2f} s | map {best['map']:6.2f} s "
                  f"({best['loop'] / best['map']:4.2f}x faster)")


async def _best(kernel: Kernel, checked: CheckedFlow, inputs: dict[str, object], file: str, runs: int = 3
                ) -> float:
    """The fewest seconds one of `runs` runs of `checked` on `kernel` took."""
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        outcome = await run_flow(kernel, checked.compiled, inputs, file=file)
        assert outcome.status == "finished", outcome.error
        took.append(time.perf_counter() - start)
    return min(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--slots", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--model-slots", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--no-model", action="store_true", help="skip the embedded-model figures")
    args = parser.parse_args()
    print(f"a map of {args.items} items, one {args.seconds * 1000:.0f} ms model call each")
    for slots in args.slots:
        ideal = math.ceil(args.items / slots) * args.seconds
        took, runs = asyncio.run(map_makespan(args.items, slots, args.seconds))
        print(f"  k={slots}: ideal {ideal:6.3f} s | flowrun {took:6.3f} s ({took / ideal:5.3f}x ideal, goal <= 1.05)"
              f", {runs} runs stored")
    if not args.no_model:
        math_sheet(args.problems, args.model_slots)


if __name__ == "__main__":
    main()
