"""HookPoint: identity forward, captures of the activation and its gradient, clean detaching."""

import copy
import pickle

import torch

from li2_lightning.hooks import HookPoint


def test_identity_and_capture_of_value_and_gradient():
    h = HookPoint()
    x = torch.randn(5, 3, requires_grad=True)
    with h.capture() as cap:
        F = h(x * 2)
        assert F.data_ptr() == (F := F).data_ptr()
        loss = (F ** 3).sum()
        loss.backward()
    # brute force: dL/dF = 3 F², and the input gradient still flows through unchanged
    torch.testing.assert_close(cap.grad, 3 * (2 * x.detach()) ** 2)
    torch.testing.assert_close(x.grad, 2 * 3 * (2 * x.detach()) ** 2)
    torch.testing.assert_close(cap.value, 2 * x.detach())
    assert cap.calls == 1 and not h._captures


def test_no_grad_passes_are_not_captured_and_several_readers_coexist():
    h = HookPoint()
    a, b = h.capture(), h.capture()
    with torch.no_grad():
        h(torch.randn(2, 2, requires_grad=True))
    assert a.calls == 0
    x = torch.randn(2, 2, requires_grad=True)
    h(x).sum().backward()
    h(x).sum().backward()
    assert a.calls == b.calls == 2  # two training passes: a reader can tell (minibatches)
    a.remove()
    a.remove()  # idempotent
    h(x).sum().backward()
    assert a.calls == 2 and b.calls == 3


def test_no_state_and_readers_do_not_travel_with_copies():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), HookPoint())
    keys = set(net.state_dict())
    net[1].capture()
    assert keys == {"0.weight", "0.bias"}
    assert not copy.deepcopy(net)[1]._captures
    assert not pickle.loads(pickle.dumps(net))[1]._captures
    assert len(net[1]._captures) == 1
