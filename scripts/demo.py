"""``make demo``: what a newcomer runs first.

For now it prepares what every later step needs: a synthetic sample dataset and a split of it
for two sites, printed as a table. The full demo (server, sites, sessions, versions) grows here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from scripts import make_sample_data, split_dataset

SAMPLE = Path("data/sample")
SITES = Path("data/sites")


def main(argv: list[str] | None = None) -> int:
    console = Console()
    console.rule("[bold]Federated brain-MRI demo: preparing data")
    console.print(f"1. Generating a synthetic 4-class MRI-like dataset in {SAMPLE}/ (not real scans).")
    code = make_sample_data.main(["--out", str(SAMPLE), "--per-class", "100", "--size", "64", "--force"])
    if code:
        return code
    console.print(f"2. Splitting it for 2 sites (stratified, like the old 50/50 script) into {SITES}/.")
    return split_dataset.main([str(SAMPLE), str(SITES), "--sites", "site1,site2", "--mode", "iid", "--force"])


if __name__ == "__main__":
    sys.exit(main())
