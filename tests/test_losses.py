import torch

from li2_lightning.losses import loss_sum


def test_centred_mse_matches_the_definition_row_by_row():
    torch.manual_seed(0)
    n, M = 9, 5
    out, y = torch.randn(n, M, dtype=torch.float64), torch.randint(0, M, (n,))
    total = 0.0
    for i in range(n):
        target = [(1.0 if c == y[i] else 0.0) - 1.0 / M for c in range(M)]
        mean = sum(out[i].tolist()) / M
        total += sum((out[i, c].item() - mean - target[c]) ** 2 for c in range(M))
    assert abs(loss_sum("mse", out, y).item() - total) < 1e-10


def test_cross_entropy_sum_matches_log_softmax():
    torch.manual_seed(1)
    out, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 4, (6,))
    expected = -sum(out[i, y[i]] - torch.logsumexp(out[i], 0) for i in range(6))
    assert abs(loss_sum("ce", out, y).item() - expected.item()) < 1e-10
