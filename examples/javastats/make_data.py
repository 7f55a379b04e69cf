"""Write readings.csv, the example's input: a few users' numeric readings, the same on every run.

    python examples/javastats/make_data.py [PATH]   (default: readings.csv next to this file)

User u07 has fewer readings than the config's min_readings, so the task skips it.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

SEED = 7
USERS = 10


def rows(seed: int = SEED, users: int = USERS) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for index in range(users):
        user = f"u{index:02d}"
        count = 3 if index == 7 else rng.randint(15, 60)
        centre = rng.uniform(-20, 80)
        out += [(user, f"{rng.gauss(centre, 12):.2f}") for _ in range(count)]
    rng.shuffle(out)  # a user's readings need not be contiguous in the file
    return out


def write(path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["user_id", "value"])
        writer.writerows(rows())


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("readings.csv"))
