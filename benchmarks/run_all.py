"""Run every benchmark in turn (what ``make benchmarks`` does); each prints its table and JSON.

python -m benchmarks.run_all [--with-convergence]
"""

import argparse
import subprocess
import sys

BENCHMARKS = ["bench_inference", "bench_train_step", "bench_memory", "bench_convert", "bench_eval"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-convergence", action="store_true", help="also the 20-min run")
    args = parser.parse_args()
    names = BENCHMARKS + (["convergence"] if args.with_convergence else [])
    failed = []
    for name in names:
        print(f"\n### {name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode != 0:
            failed.append(name)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
