"""--max-failed: how many failed users a result set may have and still pass validation (no pandas here:
every command's parser takes the flag's type from this module)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FailedTolerance:
    """How many failed users a run may have and still pass: a count ("5") or a share of its users ("2%")."""

    count: int = 0
    percent: float | None = None  # when set, the tolerance is this share of the users and `count` is unused

    @classmethod
    def parse(cls, text: str) -> FailedTolerance:
        """"5" (users) or "2%" / "2.5%" (of the users); ValueError with the rule otherwise."""
        raw = str(text).strip()
        rule = f"--max-failed takes a number of users (5) or a share of the users (2%), got {text!r}"
        if raw.endswith("%"):
            try:
                percent = float(raw[:-1])
            except ValueError:
                raise ValueError(rule) from None
            if not 0 <= percent <= 100:  # NaN fails both comparisons
                raise ValueError(f"{rule}: a share is 0% to 100%")
            return cls(percent=percent)
        if not raw.isdigit():
            raise ValueError(rule)
        return cls(count=int(raw))

    def allows(self, failed: int, users: int) -> bool:
        if self.percent is not None:
            return failed * 100 <= self.percent * users
        return failed <= self.count

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


NO_FAILED = FailedTolerance()
