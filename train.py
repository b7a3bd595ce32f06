"""Train the Li2 two-layer net through the Lightning CLI.

    python train.py fit --config configs/default.yaml
    python train.py fit --config configs/fig3.yaml --config callbacks/li2.yaml
"""

from li2_lightning.cli import main

if __name__ == "__main__":
    main()
