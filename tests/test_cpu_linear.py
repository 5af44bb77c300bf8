"""The engine's CPU Linear kernel (engine/linear.py): where it applies, that it is undone, and what it changes;
and the XᵀX statistics on the same kernel (stats.py)."""
import pytest
import torch
from torch import nn

from prunelab.algorithms import get_algorithm
from prunelab.engine import EngineOptions, prune_model
from prunelab.engine.linear import linear_kernel, onednn_available, resolve_cpu_linear
from prunelab.patterns import Pattern
from tiny_models import random_ids, tiny_model

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear kernel")


def test_choice_is_validated_and_resolved_per_device():
    with pytest.raises(ValueError, match="auto"):
        resolve_cpu_linear("mkl", "cpu")
    with pytest.raises(ValueError, match="cpu_linear|CPU linear"):
        EngineOptions(cpu_linear="fast")
    assert resolve_cpu_linear("aten", "cpu") == "aten"
    assert resolve_cpu_linear("auto", "cuda") is None  # CUDA has its own kernels: nothing is patched there
    assert resolve_cpu_linear("auto", "cpu") == ("onednn" if onednn_available() else "aten")


@needs_onednn
def test_kernel_covers_fp32_linears_only_keeps_hooks_and_is_undone():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 24, bias=False))
    half = nn.Linear(24, 8).to(torch.bfloat16)
    block.append(nn.Identity())
    x = torch.randn(3, 7, 24)
    seen = []
    block[2].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    with torch.no_grad():
        reference = block(x)
        with linear_kernel(block, "onednn"), linear_kernel(half, "onednn"):
            assert "forward" in block[0].__dict__ and "forward" in block[2].__dict__
            assert "forward" not in half.__dict__  # bf16 runs on torch's own kernel (oneDNN already)
            patched = block(x)
    assert seen == [(3, 7, 40), (3, 7, 40)]  # the hook ran in both passes
    assert not any("forward" in m.__dict__ for m in block.modules())  # restored
    # another summation order: float32 rounding of a 40-term dot product, nothing more
    torch.testing.assert_close(patched, reference, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_kernel_is_restored_when_the_forward_fails():
    layer = nn.Linear(4, 4)
    with pytest.raises(RuntimeError), linear_kernel(layer, "onednn"):
        layer(torch.randn(2, 5))  # wrong width
    assert "forward" not in layer.__dict__


@needs_onednn
def test_onednn_outputs_do_not_depend_on_the_thread_count():
    torch.manual_seed(1)
    layer = nn.Linear(576, 1536)
    x = torch.randn(1, 128, 576)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad(), linear_kernel(layer, "onednn"):
                outputs.append(layer(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1])


def test_both_kernels_prune_to_the_pattern_and_agree_up_to_rounding():
    ids = random_ids(4, 12)
    runs = {}
    for kernel in ("aten", "onednn") if onednn_available() else ("aten",):
        model = tiny_model("llama")
        info = {}
        prune_model(model, get_algorithm("sparsegpt"), Pattern(0.5), ids, progress=False,
                    options=EngineOptions(cpu_linear=kernel), info=info)
        assert info["cpu_linear"] == kernel
        runs[kernel] = model
    for layer in runs["aten"].model.layers:  # exact sparsity either way
        assert float((layer.mlp.up_proj.weight == 0).float().mean()) == 0.5
    if "onednn" in runs:
        aten, onednn = runs["aten"].state_dict(), runs["onednn"].state_dict()
        # SparseGPT's kept weights come from float32 statistics, which differ by rounding; a near-tie may flip a
        # mask entry on some CPU, so compare each weight matrix as a whole, not entry by entry
        for name in aten:
            if name.endswith("proj.weight"):
                assert float((aten[name] - onednn[name]).norm() / aten[name].norm()) < 0.05, name


def test_sweep_identity_names_the_kernel_only_where_it_changes_numbers():
    from prunelab.bench.sweep import compute_identity
    from prunelab.config import PruneConfig

    base = dict(method="wanda", model="m", sparsity=0.5, device="cpu")
    aten = compute_identity(PruneConfig(**base, cpu_linear="aten"))
    assert "cpu_linear" not in aten  # aten runs keep the identity they had before the option existed
    auto = compute_identity(PruneConfig(**base))
    assert auto.get("cpu_linear") == ("onednn" if onednn_available() else None)
    assert "cpu_linear" not in compute_identity(PruneConfig(**base, compute_dtype="bfloat16"))
    # the XᵀX statistics are float32 whatever the compute dtype: their kernel is named for every oneDNN run
    for cfg in (PruneConfig(**base), PruneConfig(**base, compute_dtype="bfloat16")):
        assert compute_identity(cfg).get("cpu_gram") == ("onednn" if onednn_available() else None)
        assert compute_identity(cfg).get("cpu_attention") == ("onednn-chunked" if onednn_available() else None)
    assert "cpu_gram" not in aten and "cpu_attention" not in aten


@pytest.mark.parametrize("kernel", ["aten", pytest.param("onednn", marks=needs_onednn)])
def test_hessian_on_each_kernel_is_xtx_within_float32_summation_error(kernel, monkeypatch):
    from prunelab import onednn
    from prunelab.stats import StatsAccumulator

    calls = []
    product = onednn.matmul_nt
    monkeypatch.setattr(onednn, "matmul_nt", lambda a, b: calls.append(a.shape) or product(a, b))
    torch.manual_seed(0)
    x = torch.randn(3, 50, 700) * torch.linspace(0.1, 10, 700)  # 700 columns: two panels of XᵀX
    acc = StatsAccumulator(700, frozenset({"hessian"}), "cpu", kernel)
    acc.add(x[:1])
    acc.add(x[1:])
    hessian = acc.result().hessian
    flat = x.reshape(-1, 700).double()
    exact = flat.t() @ flat
    # any order of the 150 float32 multiply-adds is within n·u·Σ|x_i||x_j| of the exact sum (u = 2⁻²⁴)
    bound = 150 * 2.0 ** -24 * (flat.abs().t() @ flat.abs())
    assert bool(((hessian.double() - exact).abs() <= bound).all())
    assert torch.equal(hessian, hessian.t())
    assert len(calls) == (2 * 3 if kernel == "onednn" else 0)  # two panels per sequence, added one at a time
