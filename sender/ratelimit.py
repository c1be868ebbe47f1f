"""The account cap and what each campaign may use of it (SPEC §5).

The one owner of the numbers: `cap` comes from SENDER_MAX_RATE or GetAccount, `sandbox` from
GetAccount, `instances` from the heartbeat (for display: instances no longer split the cap, they
share it through sender.shared_rate). Enforcement, pacing and throttling feedback live in
sender.shared_rate.
"""

from __future__ import annotations


class AccountRate:
    """The account cap, the sandbox flag, and the live instance count."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.instances = 1
        self.sandbox = False

    def campaign_rate(self, rate_per_sec: float | None) -> float | None:
        """A campaign's own shared budget (SPEC §5): min(rate_per_sec, cap), or None when it has none.

        A null rate means the whole cap (no budget of its own), except in the SES sandbox, where it
        means 1/s.
        """
        if rate_per_sec:
            return min(rate_per_sec, self.cap)
        return min(1.0, self.cap) if self.sandbox else None
