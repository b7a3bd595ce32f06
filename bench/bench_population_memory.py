"""The sweep's memory estimate for a population against the measured peak, for three population sizes.

Each size trains in a fresh process (Z41, K 256, train fraction 0.4, 5 epochs); the measured value is
the process's peak resident memory (VmHWM) minus its resident memory just before the population is
built. The estimate is what ``li2 sweep`` plans with, ``memory.population_bytes``: ``POPULATION_FIXED +
SAFETY × data + S × MEMBER_FACTOR × (model + max(train step, val step))`` of ``memory.estimate_bytes``.

    python bench/bench_population_memory.py [--group Z41] [--K 256] [--sizes 4 16 64]
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from li2_lightning.population import MemberSettings, PopulationModule, train_population
import lightning.pytorch  # imported before the baseline
group, K, S = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = rss("VmRSS:")
module = PopulationModule(group=group, K=K, members=[MemberSettings(seed=s, train_fraction=0.4) for s in range(S)],
                          analyze=False)
train_population(module, 5, accelerator="cpu")
print(json.dumps({"measured": rss("VmHWM:") - before, "M": module.M, "n": module.n_trains[0]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="Z41")
    parser.add_argument("--K", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    args = parser.parse_args()
    from li2_lightning import memory

    print(f"{'S':>4} {'estimate MB':>12} {'measured MB':>12} {'estimate/measured':>18}")
    for S in args.sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, args.group, str(args.K), str(S)], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        got = json.loads(out)
        M, n = got["M"], got["n"]
        planned = memory.population_bytes(M, args.K, n, M * M - n, S)
        print(f"{S:>4} {planned / 1e6:>12.1f} {got['measured'] / 1e6:>12.1f} {planned / got['measured']:>18.2f}")


if __name__ == "__main__":
    main()
