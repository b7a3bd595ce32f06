"""li2_lightning: the Li2 framework of feature emergence and grokking as a PyTorch Lightning plugin."""

__version__ = "0.1.0"
