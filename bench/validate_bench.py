"""How fast `flowrun validate` is: 1,000 generated flows of 10-50 steps, one flow of 10,000 steps, and flows with
1 MB of template text in one instruction (hostile text that once took quadratic time, and ordinary holes).

Runs pinned to one CPU core. The baseline, measured in the same run on the same files, is PyYAML's fastest plain
load (libyaml's CSafeLoader): the least any YAML-reading validator must spend. Targets: 1,000 files in under 3 s,
the 10,000-step flow in under 2 s, each 1 MB template in under 1 s.

    python bench/validate_bench.py [--files 1000] [--big-steps 10000] [--seed 1]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import tempfile
import time
from pathlib import Path

import yaml

from engine.flow.templates import facts
from engine.flow.validate import validate_paths

TOOLS = ["calculator", "city_search", "distance", "flight_search", "restaurant_search", "read_file", "write_file"]


def make_flow(n_steps: int, rng: random.Random, name: str) -> str:
    """A valid flow of `n_steps` steps: a chain of process steps with decisions looping back, one terminal.

    Step ids differ from file to file, as in a real repository, so no template text repeats across files.
    """
    prefix = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6))
    ids = [f"{prefix}_{i}" for i in range(n_steps - 1)] + ["finish"]
    tools = rng.sample(TOOLS, 3)
    lines = [
        "# yaml-language-server: $schema=../schemas/flow.schema.json",
        "flowrun: 1",
        f"name: {name}",
        "description: >-",
        "  You are a generated agent used to measure validation speed. You follow each instruction carefully.",
        "inputs:",
        "  query: {type: string, description: The request}",
        "  days: {type: integer}",
        f"tools: [{', '.join(tools)}]",
        "model: {name: smollm2-135m, options: {temperature: 0}}",
        f"limits: {{max_steps: {n_steps * 4}}}",
        "steps:",
    ]
    for i, sid in enumerate(ids[:-1]):
        following = ids[i + 1]
        if i % 5 == 4 and i > 0:
            back = ids[rng.randrange(0, i)]
            lines += [f"  {sid}:", "    kind: decision", f"    question: Is part {i} of {{{{ inputs.query }}}} done?"]
            if rng.random() < 0.5:
                lines.append(f"    decide: \"{{{{ 'yes' if visits.{ids[i - 1]} >= inputs.days else 'no' }}}}\"")
            lines.append(f'    branches: {{"yes": {following}, "no": {back}}}')
            continue
        lines += [f"  {sid}:", "    kind: process"]
        if rng.random() < 0.3:
            lines.append(f"    instruction: Work on part {i} of \"{{{{ inputs.query }}}}\" using "
                         f"{{{{ steps.{ids[0]}.output }}}}.")
        else:
            lines.append(f"    instruction: Work on part {i} of the request and write down what you found out.")
        if i == 0:
            lines.append("    tools: [" + ", ".join(tools) + "]")
        elif rng.random() < 0.3:
            lines.append(f"    tool: {rng.choice(tools)}")
        if rng.random() < 0.15:
            lines += ["    output_schema:", "      type: object", "      properties:",
                      "        answer: {type: string}", "        score: {type: integer, minimum: 0}",
                      "      required: [answer]"]
        lines.append(f"    next: {following}")
    lines += ["  finish:", "    kind: terminal", "    instruction: Give the final answer."]
    return "\n".join(lines) + "\n"


# Repeated to the size asked for: holes that never close, braces only, and ordinary text with holes.
TEMPLATE_UNITS = {"unclosed": "{{ x ", "braces": "{{", "ordinary": "{{ inputs.query }} and "}


def template_flow(text: str) -> str:
    """A one-step flow whose instruction is `text` (a JSON string is a YAML double-quoted scalar)."""
    return ("flowrun: 1\nname: Template\ninputs:\n  query: {type: string}\nsteps:\n  answer:\n"
            f"    kind: terminal\n    instruction: {json.dumps(text)}\n")


def parse_file(path: Path) -> None:
    yaml.load(path.read_text(), Loader=yaml.CSafeLoader)


def timed(fn) -> float:
    """Seconds `fn` takes from cold: no template analysis cached from an earlier run."""
    facts.cache_clear()
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--big-steps", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--template-kb", type=int, default=1000, help="size of each template text")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        many = Path(tmp) / "many"
        many.mkdir()
        steps = 0
        for i in range(args.files):
            n = rng.randint(10, 50)
            steps += n
            (many / f"flow_{i:04d}.yaml").write_text(make_flow(n, rng, f"Flow{i}"))
        big = Path(tmp) / "big.yaml"
        big.write_text(make_flow(args.big_steps, rng, "Big"))
        templates = {name: Path(tmp) / f"template_{name}.yaml" for name in TEMPLATE_UNITS}
        for name, unit in TEMPLATE_UNITS.items():
            templates[name].write_text(template_flow(unit * -(-args.template_kb * 1000 // len(unit))))

        files = sorted(many.iterdir())
        report = validate_paths([many])  # warm-up, and proof the generated flows are clean
        assert not report.diagnostics, report.diagnostics[:3]
        assert not validate_paths([big]).diagnostics

        def parse_all() -> None:
            for f in files:
                yaml.load(f.read_text(), Loader=yaml.CSafeLoader)

        parse_many = min(timed(parse_all) for _ in range(3))
        validate_many = min(timed(lambda: validate_paths([many])) for _ in range(3))
        parse_big = min(timed(lambda: yaml.load(big.read_text(), Loader=yaml.CSafeLoader)) for _ in range(3))
        validate_big = min(timed(lambda: validate_paths([big])) for _ in range(3))
        template_times = {
            name: (min(timed(functools.partial(validate_paths, [path])) for _ in range(3)),
                   min(timed(functools.partial(parse_file, path)) for _ in range(3)))
            for name, path in templates.items()
        }

    print(f"validate {args.files} files ({steps} steps) on one core: {validate_many:.3f} s = "
          f"{args.files / validate_many:,.0f} files/s   (target: under 3 s for 1,000 files)")
    print(f"  baseline yaml.load (libyaml) of the same files: {parse_many:.3f} s; validate/baseline = "
          f"{validate_many / parse_many:.2f}x")
    print(f"validate one {args.big_steps}-step flow: {validate_big:.3f} s   (target: under 2 s)")
    print(f"  baseline yaml.load (libyaml) of it: {parse_big:.3f} s; "
          f"validate/baseline = {validate_big / parse_big:.2f}x")
    for name, (validate_template, parse_template) in template_times.items():
        print(f"validate {args.template_kb:,} KB of template text ({name} `{TEMPLATE_UNITS[name]}`...): "
              f"{validate_template:.3f} s   (target: under 1 s for 1,000 KB); "
              f"baseline yaml.load {parse_template:.3f} s, validate/baseline = "
              f"{validate_template / parse_template:.2f}x")


if __name__ == "__main__":
    main()
