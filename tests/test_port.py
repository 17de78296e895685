"""`dualstep.port.to_jax`: a torch / SpikingJelly network as one pure JAX step, equal to the
network in outputs, states and gradients."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy
nn = torch.nn

import dualstep as ds  # noqa: E402
from dualstep import interop, port  # noqa: E402


def _sj():
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    return functional, layer, neuron, surrogate


def _close(a, b, tol=2e-6):
    a = np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if b.dtype == np.int64:  # num_batches_tracked, narrowed without x64 (module_to_jax)
        assert a.dtype == np.int32 and np.array_equal(a, b)
        return
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def conv_snn(step_mode="m", surrogate_name="ATan"):
    """The issue's network: Conv2d, BatchNorm2d, LIF, MaxPool2d, Flatten, Linear, LIF."""
    functional, layer, neuron, surrogate = _sj()
    torch.manual_seed(0)
    spike = getattr(surrogate, surrogate_name)
    net = nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1, bias=False),
        layer.BatchNorm2d(8),
        neuron.LIFNode(tau=2.0, surrogate_function=spike()),
        layer.MaxPool2d(2),
        layer.Flatten(),
        layer.Linear(8 * 4 * 4, 10),
        neuron.LIFNode(tau=2.0, surrogate_function=spike()),
    )
    functional.set_step_mode(net, step_mode)
    with torch.no_grad():
        net[0].weight.mul_(6.0)  # enough drive that both layers spike
        net[5].weight.mul_(6.0)
    return net


def _loss_torch(net, x, functional):
    functional.reset_net(net)
    y = net(x)
    return (y * torch.linspace(-1, 1, y.shape[-1])).sum() + y.sum(), y


def _loss_jax(step, params, x, state):
    y, s = step(params, x, state)
    return (y * jnp.linspace(-1, 1, y.shape[-1])).sum() + y.sum(), (y, s)


@pytest.mark.parametrize("training", [False, True])
def test_conv_snn_port_equals_spikingjelly(training):
    """Spikes, each neuron's final voltage, batch norm's running statistics, and the gradient
    of a loss with respect to every parameter."""
    functional, *_ = _sj()
    net = conv_snn()
    net.train(training)
    x = (torch.rand(6, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    step, params, state = port.to_jax(net, x)
    assert sorted(state) == (["1", "2", "6"] if training else ["2", "6"])
    loss_t, y_t = _loss_torch(net, x, functional)  # once: training updates running statistics
    names = [n for n, _ in net.named_parameters()]
    grads_t = dict(zip(names, torch.autograd.grad(loss_t, list(net.parameters())), strict=True))
    fn = jax.jit(jax.value_and_grad(functools.partial(_loss_jax, step), has_aux=True))
    (loss_j, (y, s)), grads_j = fn(params, jnp.asarray(x.numpy()), state)
    assert np.array_equal(np.asarray(y), y_t.detach().numpy()) and y_t.sum() > 0
    _close(loss_j, loss_t.detach(), 1e-5)
    for path in ("2", "6"):
        _close(s[path], net[int(path)].v)
    assert grads_j.keys() == grads_t.keys()
    for name, g in grads_t.items():
        assert float(g.abs().max()) > 0, name
        _close(grads_j[name], g, 2e-5)
    weights = step.weights(params, s)
    buffers = dict(net.named_buffers())
    for name, value in buffers.items():
        if name.endswith("num_batches_tracked"):
            assert int(weights[name]) == int(value)
        else:
            _close(weights[name], value)


def test_single_step_network_runs_over_a_sequence():
    """A network in single-step mode is a step: ``multi_step_forward`` over ``partial(step,
    params)`` equals SpikingJelly's loop, output and final state."""
    functional, *_ = _sj()
    net = conv_snn("s", "Sigmoid").eval()
    x = (torch.rand(5, 3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    step, params, state = port.to_jax(net, x[0])
    y, s = ds.multi_step_forward(
        jnp.asarray(x.numpy()), functools.partial(step, params), state=state
    )
    functional.reset_net(net)
    y_t = torch.stack([net(x_t) for x_t in x])
    assert np.array_equal(np.asarray(y), y_t.detach().numpy())
    _close(s["6"], net[6].v)


LAYERS = {
    "linear": (lambda: nn.Linear(6, 3), (4, 6)),
    "linear-no-bias-3d": (lambda: nn.Linear(6, 3, bias=False), (2, 4, 6)),
    "conv1d": (lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1), (2, 2, 9)),
    "conv1d-same": (lambda: nn.Conv1d(2, 4, 4, padding="same", dilation=2), (2, 2, 9)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, stride=(2, 1), padding=(1, 2), groups=2), (2, 4, 7, 7)),
    "conv2d-valid-dilated": (lambda: nn.Conv2d(2, 3, 3, padding="valid", dilation=2), (1, 2, 9, 8)),
    "conv2d-unbatched": (lambda: nn.Conv2d(2, 3, 3), (2, 6, 6)),
    "bn1d": (lambda: nn.BatchNorm1d(3), (5, 3)),
    "bn1d-length": (lambda: nn.BatchNorm1d(3, momentum=None), (5, 3, 4)),
    "bn2d-no-affine": (lambda: nn.BatchNorm2d(3, affine=False), (4, 3, 2, 2)),
    "bn2d-untracked": (lambda: nn.BatchNorm2d(3, track_running_stats=False), (4, 3, 2, 2)),
    "maxpool": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 7, 7)),
    "maxpool-dilated": (lambda: nn.MaxPool2d(2, dilation=2), (2, 3, 7, 6)),
    "avgpool": (lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
    "avgpool-pad": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 7, 7)),
    "avgpool-pad-included": (lambda: nn.AvgPool2d(3, 2, 1), (2, 3, 7, 7)),
    "avgpool-divisor": (lambda: nn.AvgPool2d(2, divisor_override=3), (2, 3, 4, 4)),
    "adaptive": (lambda: nn.AdaptiveAvgPool2d((3, None)), (2, 3, 7, 5)),
    "adaptive-1": (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 5)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 4, 5)),
    "flatten-middle": (lambda: nn.Flatten(1, 2), (2, 3, 4, 5)),
    "activations": (
        lambda: nn.Sequential(
            nn.ReLU(),
            nn.Identity(),
            nn.LeakyReLU(0.2),
            nn.ELU(0.5),
            nn.GELU(),
            nn.SiLU(),
            nn.Tanh(),
            nn.Sigmoid(),
            nn.Hardtanh(-0.5, 0.6),
            nn.ReLU6(),
            nn.Softplus(2.0, 1.0),
            nn.GELU("tanh"),
            nn.Softmax(dim=1),
            nn.LogSoftmax(dim=-1),
        ),
        (4, 6),
    ),
    "dropout-eval": (lambda: nn.Dropout(0.3).eval(), (4, 6)),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("training", [False, True])
def test_every_torch_layer_ports(name, training):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    module = make()
    if name != "dropout-eval":
        module.train(training)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    step, params, state = port.to_jax(module, x)
    y, s = step(params, jnp.asarray(x.numpy()), state)
    y_t = module(x)
    _close(y, y_t, 1e-5)
    weights = step.weights(params, s)
    for buffer_name, value in module.named_buffers():  # training updated the running ones
        _close(weights[buffer_name], value, 1e-5)


def test_every_spikingjelly_neuron_ports_in_both_step_modes():
    """Each neuron type with a non-default surrogate, spikes equal; ParametricLIF's `w` is a
    parameter with SpikingJelly's gradient."""
    functional, layer, neuron, surrogate = _sj()
    made = [
        neuron.IFNode(v_reset=None, surrogate_function=surrogate.Erf()),
        neuron.LIFNode(tau=3.0, decay_input=False, detach_reset=True),
        neuron.ParametricLIFNode(init_tau=3.0, surrogate_function=surrogate.SoftSign()),
        neuron.QIFNode(surrogate_function=surrogate.PiecewiseQuadratic()),
        neuron.EIFNode(surrogate_function=surrogate.SuperSpike()),
        neuron.IzhikevichNode(a=0.3, b=0.2),
        neuron.CUBALIFNode(),
    ]
    x = torch.rand(6, 2, 5, generator=torch.Generator().manual_seed(4)) * 2
    for mode in ("s", "m"):
        for sj_neuron in made:
            net = nn.Sequential(layer.Linear(5, 5), sj_neuron)
            torch.manual_seed(0)
            net[0].reset_parameters()
            functional.set_step_mode(net, mode)
            functional.reset_net(net)
            y_t = net(x) if mode == "m" else torch.stack([net(x_t) for x_t in x])
            example = x if mode == "m" else x[0]
            step, params, state = port.to_jax(net, example)
            run = functools.partial(step, params)
            xj = jnp.asarray(x.numpy())
            if mode == "m":
                y, s = run(xj, state)
            else:
                y, s = ds.multi_step_forward(xj, run, state=state)
            label = (mode, type(sj_neuron).__name__)
            assert np.array_equal(np.asarray(y), y_t.detach().numpy()), label
            v = s["1"]["v"] if isinstance(s["1"], dict) else s["1"]
            _close(v, sj_neuron.v)
    plif = made[2]
    net = nn.Sequential(layer.Linear(5, 5), plif)
    functional.set_step_mode(net, "m")
    functional.reset_net(net)
    (g_t,) = torch.autograd.grad(net(x).sum(), [plif.w])
    step, params, state = port.to_jax(net, x)
    g = jax.grad(lambda p: step(p, jnp.asarray(x.numpy()), state)[0].sum())(params)
    assert float(g_t) != 0
    _close(g["1.w"], g_t, 1e-5)


def test_containers_and_the_readout_port():
    functional, layer, neuron, _ = _sj()
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Linear(4, 6), nn.BatchNorm1d(6)),
        layer.MultiStepContainer(neuron.LIFNode()),
        layer.SeqToANNContainer(nn.Linear(6, 3)),
        neuron.NonSpikingLIFNode(tau=2.0, decode="mean-mem"),
    ).train()
    x = torch.rand(7, 5, 4, generator=torch.Generator().manual_seed(5)) * 3
    step, params, state = port.to_jax(net, x)
    assert sorted(state) == ["0.1", "1.0"]
    y, s = step(params, jnp.asarray(x.numpy()), state)
    functional.reset_net(net)
    _close(y, net(x), 1e-5)
    _close(s["1.0"], net[1][0].v)
    _close(step.weights(params, s)["0.1.running_var"], net[0][1].running_var, 1e-6)


def test_dropout_in_training_draws_masks_from_the_key():
    """torch's dropout: a fresh mask per call, from the key the state carries; SpikingJelly's:
    one mask per sequence, shared by its steps, in the state."""
    _, layer, _, _ = _sj()
    x = jnp.ones((8, 200, 50))
    step, params, state = port.to_jax(nn.Dropout(0.25).train(), x, key=jax.random.key(0))
    y, s1 = step(params, x, state)
    y2, _ = step(params, x, s1)
    assert set(np.unique(np.asarray(y))) == {0.0, np.float32(1 / 0.75)}
    assert abs(float((y == 0).mean()) - 0.25) < 0.01 and not np.array_equal(y, y2)
    sj_drop = layer.Dropout(0.25, step_mode="m").train()
    step, params, state = port.to_jax(sj_drop, x, key=jax.random.key(0))
    y, s = step(params, x, state)
    assert np.array_equal(np.asarray(y[0]), np.asarray(y[-1]))  # one mask over time
    assert abs(float((y == 0).mean()) - 0.25) < 0.01
    y_again, _ = step(params, x, s)
    y_reset, _ = step(params, x, step.reset(s))  # a new sequence: a new mask
    assert np.array_equal(y_again, y) and not np.array_equal(y_reset, y)
    with pytest.raises(ValueError, match="dropout at `0` is in training mode: pass `key="):
        port.to_jax(nn.Sequential(nn.Dropout()).train(), x)


def test_weights_go_back_with_module_from_jax_and_reset_keeps_running_statistics():
    net = conv_snn().train()
    x = torch.zeros(2, 3, 1, 8, 8)
    step, params, state = port.to_jax(net, x)
    params = jax.tree_util.tree_map(lambda a: a + 1, params)
    _, s = step(params, jnp.ones((2, 3, 1, 8, 8)), state)
    s = step.reset(s)
    assert int(s["1"]["count"]) == 1 and float(s["1"]["mean"].sum()) != 0
    assert all(np.array_equal(s[k], state[k]) for k in ("2", "6"))  # neurons back to rest
    interop.module_from_jax(net, step.weights(params, s))
    assert net[1].num_batches_tracked == 1
    _close(params["5.bias"], net[5].bias)


class _Custom(nn.Module):
    def forward(self, x):
        return x * 2


def test_what_cannot_be_ported_is_named_with_its_path():
    _, _, neuron, surrogate = _sj()
    x = torch.zeros(2, 4)
    cases = [
        (nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), _Custom())), "_Custom at `1.1`"),
        (_Custom(), "_Custom at the network itself"),
        (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), "MaxPool2d at `0` (ceil_mode"),
        (nn.Conv2d(1, 1, 1, padding_mode="reflect"), "padding_mode='reflect'"),
        (nn.Sequential(neuron.LIFNode(surrogate_function=surrogate.S2NN())), "surrogate S2NN"),
        (neuron.NonSpikingLIFNode(), "decode=None"),
        (nn.Sequential(neuron.KLIFNode()), "KLIFNode at `0`"),
    ]
    for module, message in cases:
        with pytest.raises(port.UnsupportedModule, match=re.escape(message)) as info:
            port.to_jax(module, x)
        assert "supported: torch.nn: Sequential, Linear" in str(info.value)
        assert isinstance(info.value, TypeError)


def test_assert_implementations_close_proves_a_port_in_one_line():
    """Outputs, every module's output, neuron and batch-norm states, and gradients."""
    from dualstep.testing import assert_implementations_close

    x = (torch.rand(6, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    for net, example in ((conv_snn().train(), x), (conv_snn("s").eval(), x[0])):
        report = assert_implementations_close(net, port.to_jax(net, example), x, compare_grads=True)
        leaves = [row.leaf for row in report.rows]
        assert leaves[:3] == ["y", "layer 0 (Conv2d)", "layer 1 (BatchNorm2d)"]
        assert "state['6']" in leaves and "grad['5.weight']" in leaves
        assert ("state['1']['mean']" in leaves) == net.training
        assert int(net[1].num_batches_tracked) == 0  # the comparison leaves the net as it was


def test_assert_implementations_close_names_where_a_port_diverges():
    from dualstep.testing import assert_implementations_close

    x = (torch.rand(6, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    net = conv_snn().eval()
    step, params, state = port.to_jax(net, x)
    wrong = {**params, "5.weight": params["5.weight"] * 1.01}
    with pytest.raises(AssertionError, match=r"first divergence: layer 5 \(Linear\) at step 0"):
        assert_implementations_close(net, (step, wrong, state), x)
    late = {**state, "2": state["2"] + 0.5}
    report = assert_implementations_close(net, (step, params, late), x, check=False)
    bad = {row.leaf: row.first_bad_step for row in report.rows if not row.ok}
    assert bad["layer 2 (LIFNode)"] == 0 and "layer 1 (BatchNorm2d)" not in bad
    # The same spikes through another surrogate: only the gradients differ.
    other = conv_snn(surrogate_name="Sigmoid").eval()
    report = assert_implementations_close(
        net, port.to_jax(other, x), x, compare_grads=True, check=False
    )
    bad = [row.leaf for row in report.rows if not row.ok]
    assert bad and all(leaf.startswith("grad[") for leaf in bad)
    with pytest.raises(ValueError, match="`compare_grads=True` needs a torch network"):
        assert_implementations_close(
            lambda x, v: (x, v),
            lambda x, v: (x, v),
            np.zeros((2, 1)),
            reference_state=np.zeros(1),
            candidate_state=np.zeros(1),
            compare_grads=True,
        )


def test_an_example_input_that_does_not_fit_names_the_module():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(6, 2)))
    with pytest.raises(ValueError, match=r"Linear at `2.0` got an input of shape \(3, 8\)"):
        port.to_jax(net, torch.zeros(3, 4))
