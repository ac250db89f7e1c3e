"""A flow of model steps in a line, for the benchmarks that run many runs of one."""


def line_of_steps(steps: int) -> str:
    """The text of a flow of `steps` model steps in a line, ending in a terminal built from data (no model call)."""
    lines = ["flowrun: 1", "name: Steps", "description: A line of model steps.", f"limits: {{max_steps: {steps + 1}}}",
             "steps:"]
    for n in range(steps):
        lines += [f"  s{n}:", "    kind: process", f"    instruction: Step {n}.", f"    next: s{n + 1}"]
    lines += [f"  s{steps}:", "    kind: terminal", "    output: done"]
    return "\n".join(lines) + "\n"
