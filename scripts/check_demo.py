"""Check that a `pydcr demo` report shows a model that learned what the method claims, not only
that the demo ran: CI runs it on the demo's report.json.

    python scripts/check_demo.py pydcr-demo/report.json

The checks are the method's invariants, not the recorded figures: every cell well above chance
(50%), high-resolution probes better than 8x8 ones for the trunk, and DCR's coupled branches at
least as good as the trunk alone, on average over the probe sizes, within the demo's noise. (A
single cell's gap between the two is a handful of the 750 pairs: a change of rounding alone has
turned the 8x8 one round, docs/benchmarks.md.) Exit status 1 names each one that fails.
"""

from __future__ import annotations

import json
import sys

ABOVE_CHANCE = 0.70  # verification pairs are half same, half different: chance is 0.5
NOISE = 0.01  # a point of accuracy, 7-8 of the 750 pairs: what a run-to-run difference of rounding moves


def failed_checks(table: dict) -> list[str]:
    failed = []
    for column, cells in table.items():
        for row, cell in cells.items():
            if not ABOVE_CHANCE < cell["mean"] <= 1:
                failed.append(f"{row} at {column}: {100 * cell['mean']:.1f}% is not above {100 * ABOVE_CHANCE:.0f}%")
    trunk = {column: cells["trunk"]["mean"] for column, cells in table.items()}
    if not trunk["HR"] > trunk["8x8"]:
        failed.append(f"the trunk is not better on HR probes ({100 * trunk['HR']:.1f}%) than on 8x8 "
                      f"({100 * trunk['8x8']:.1f}%)")
    sized = [column for column, cells in table.items() if "DCR" in cells]
    dcr_mean = sum(table[c]["DCR"]["mean"] for c in sized) / len(sized)
    trunk_mean = sum(trunk[c] for c in sized) / len(sized)
    if not dcr_mean >= trunk_mean - NOISE:
        failed.append(f"DCR ({100 * dcr_mean:.1f}%) is below the trunk ({100 * trunk_mean:.1f}%) on average over "
                      f"{', '.join(sized)}, by more than {100 * NOISE:.0f} point")
    return failed


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        table = json.load(f)["table"]
    failed = failed_checks(table)
    for message in failed:
        print(f"check_demo: {message}", file=sys.stderr)
    if not failed:
        print(f"check_demo: {argv[0]}: every cell above {100 * ABOVE_CHANCE:.0f}%, the trunk better on HR "
              "than 8x8 probes, DCR at least as good as the trunk on average over the probe sizes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
