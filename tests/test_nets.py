import pytest
import torch

from li2_lightning.nets import TwoLayerNet


def _one_hot_inputs(x, M):
    X = torch.zeros(len(x), 2 * M)
    X[torch.arange(len(x)), x[:, 0]] = 1
    X[torch.arange(len(x)), M + x[:, 1]] = 1
    return X


@pytest.mark.parametrize("activation", ["sqr", "relu", "silu", "relusqr"])
def test_gather_first_layer_equals_dense_one_hot_matmul(activation):
    torch.manual_seed(0)
    M, K = 7, 16
    net = TwoLayerNet(M, K, activation=activation, output_scale=1.7)
    x = torch.cartesian_prod(torch.arange(M), torch.arange(M))
    X = _one_hot_inputs(x, M)
    sigma = {"sqr": lambda z: z**2, "relu": lambda z: z.clamp(min=0),
             "silu": lambda z: z / (1 + torch.exp(-z)), "relusqr": lambda z: z.clamp(min=0) ** 2}[activation]
    dense = 1.7 * sigma(X @ net.W) @ net.V
    out = net(x)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)
    # the gradients agree too: the gather's backward is a scatter-add into W's rows
    g = torch.randn_like(out)
    gW, gV = torch.autograd.grad((out * g).sum(), [net.W, net.V])
    gW_d, gV_d = torch.autograd.grad((dense * g).sum(), [net.W, net.V])
    torch.testing.assert_close(gW, gW_d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gV, gV_d, rtol=1e-5, atol=1e-5)


def test_shapes_init_and_zero_init_V():
    torch.manual_seed(0)
    net = TwoLayerNet(11, 32)
    assert net.W.shape == (22, 32) and net.V.shape == (32, 11)
    assert net.W.abs().max() <= 1 / 22**0.5 and net.V.abs().max() <= 1 / 32**0.5
    assert TwoLayerNet(11, 32, V_init_scale=0.0).V.abs().max() == 0
    # W is drawn first from the global RNG, so a seed fixes both layers
    torch.manual_seed(3)
    a = TwoLayerNet(5, 4)
    torch.manual_seed(3)
    b = TwoLayerNet(5, 4)
    assert torch.equal(a.W, b.W) and torch.equal(a.V, b.V)


@pytest.mark.parametrize("kwargs, match", [
    ({"M": 1, "K": 4}, "M=1"),
    ({"M": 5, "K": 0}, "K=0"),
    ({"M": 5, "K": 4, "activation": "tanh"}, "activation='tanh'.*relusqr"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoLayerNet(**kwargs)
