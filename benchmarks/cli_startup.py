"""Wall time of `bicc-lab --help` (median of N runs), next to `trl --help` and `lm-eval --help`.

Run: .venv/bin/python benchmarks/cli_startup.py [N]
Ratios are measured in one run because the machine is noisy.
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def median_seconds(argv: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    ours = median_seconds([str(BIN / "bicc-lab"), "--help"], n)
    print(f"bicc-lab --help   median {ours:.3f} s over {n} runs (target <= 0.300 s)")
    for name in ("trl", "lm-eval"):
        exe = BIN / name
        if exe.exists():
            other = median_seconds([str(exe), "--help"], n)
            print(f"{name + ' --help':<17} median {other:.3f} s  (bicc-lab / {name} = {ours / other:.2f})")


if __name__ == "__main__":
    main()
