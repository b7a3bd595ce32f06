"""Train the Li2 two-layer net through the Lightning CLI (the same as the `li2` command).

    python train.py fit --config configs/default.yaml
    python train.py fit --config configs/fig3.yaml --config callbacks/li2.yaml

configs/base.yaml is loaded first; each run writes into its own folder runs/<experiment>/<date-time>/
(root: $LI2_RUNS_DIR, else runs/ here), printed at the start and the end of the run.
"""

from li2_lightning.cli import main

if __name__ == "__main__":
    main()
