"""Waiting to try again what may work a moment later (a model server restarting, a database another process holds
locked): exponential backoff, capped, with full jitter so that many waiting runs do not all come back at once."""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.settings import number


@dataclass(frozen=True)
class Backoff:
    """Up to `attempts` tries; before try n+1 a random wait of up to min(cap, base * 2**n) seconds."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (0 for the first)."""
        # 2**64 times any base past a few nanoseconds is past any cap; a higher power overflows a float
        return random.uniform(0, min(self.cap, self.base * 2 ** min(attempt, 64)))

    @classmethod
    def from_env(cls) -> Backoff:
        """Model call retries as FLOWRUN_RETRIES (tries after the first) and FLOWRUN_RETRY_DELAY (base seconds) set
        them."""
        return cls(attempts=1 + int(number("FLOWRUN_RETRIES", cls.attempts - 1, whole=True)),
                   base=number("FLOWRUN_RETRY_DELAY", cls.base))
