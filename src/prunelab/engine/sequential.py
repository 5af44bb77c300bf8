"""The sequential engine: prune a model block by block on calibration activations.

One traversal serves every run: block i comes from a source (the model in memory, or shards on disk read
lazily), its prunable layers' inputs are hooked while the calibration activations run through it in batches,
the statistics the algorithm asks for are accumulated on the compute device (layers fed the same tensor, like
q/k/v, share one accumulator), the algorithm solves each layer, the pruned block is run again so its outputs
become the next block's inputs, and the block goes back to the source (which may write it out and free it).
Only the current block, its statistics and the activations (one buffer, on the device, in host memory or in a
file) exist at a time. Methods that need no statistics (magnitude) never run a forward pass.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import inspect
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..algorithms.base import PruningAlgorithm
from ..models.adapters import BlockCall, ModelAdapter, _StopForward, to_dtype
from ..patterns import Pattern
from ..stats import LayerStats, StatsAccumulator, math_dtype, of_source, stat_kind
from ..steps import STAGES, LayerSolve, PostStep, get_step, steps_of
from .activations import ActivationBuffer, choose_place
from .linear import check_cpu_linear, cpu_kernels, resolve_cpu_linear


@dataclass(frozen=True)
class PostSteps:
    """What the engine does around the algorithm, for any method (the steps themselves are registered kinds,
    see steps.py; the algorithm's own defaults are its ``post_steps``).

    refine: a registered refine step ("dsnot": revise the method's mask without changing kept values;
    "dsnot-h": the same moves kept only if they lower the true error);
    refit: least-squares weights on the final support by PCG (ALPS's last step; needs XᵀX);
    diagnostics: collect XᵀX so every layer's reconstruction error is recorded. None ("auto"): the error is
    recorded when XᵀX is collected anyway (SparseGPT, ALPS, MAMA, refit, dsnot-h); score methods (Wanda,
    magnitude) skip it, since accumulating XᵀX costs Wanda about a third of its time; True forces it for them
    (magnitude then runs the calibration passes); False: XᵀX is not collected for diagnostics;
    bias_correction: add (Ŵ − W)·E[x] to a layer's bias so its mean output is kept (None: the algorithm's
    default, on for MAMA).
    """
    refine: str | None = None
    refit: bool = False
    diagnostics: bool | None = None
    bias_correction: bool | None = None

    def __post_init__(self):
        if self.refine is not None and self.refine not in steps_of("refine"):
            raise ValueError(f"unknown refinement {self.refine!r}; available: {', '.join(steps_of('refine'))}")

    def steps(self, algorithm) -> list[PostStep]:
        """The steps to run after ``algorithm``, in stage order: its defaults, overridden by these settings."""
        chosen = {}
        for name in getattr(algorithm, "post_steps", ()):
            step = get_step(name)
            chosen[step.stage] = step
        if self.refine:
            chosen["refine"] = get_step(self.refine)
        if self.refit:
            chosen["refit"] = get_step("refit")
        if self.bias_correction is True:
            chosen["bias"] = get_step("bias-correction")
        elif self.bias_correction is False:
            chosen.pop("bias", None)
        return [chosen[stage] for stage in STAGES if stage in chosen]

    def corrects_bias(self, algorithm) -> bool:
        return any(step.stage == "bias" for step in self.steps(algorithm))

    def needs(self, algorithm) -> frozenset[str]:
        needs = set(algorithm.needs).union(*(step.needs for step in self.steps(algorithm)))
        if self.diagnostics:
            needs.add("hessian")
        return frozenset(needs)

    def to_dict(self) -> dict:
        return {"refine": self.refine, "refit": self.refit, "diagnostics": self.diagnostics,
                "bias_correction": self.bias_correction}


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    sparsity: float  # measured fraction of exact zeros after pruning
    seconds: float  # time spent in the algorithm (and refine/refit) for this layer
    reconstruction_error: float | None = None  # ‖X(Ŵ−W)‖_F / ‖XŴ‖_F from XᵀX, when the Hessian was collected
    error_before_refit: float | None = None
    zeros: int | None = None  # exact count of zeros (the sparsity is a float32 mean)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "sparsity": self.sparsity, "seconds": self.seconds,
                "reconstruction_error": self.reconstruction_error, "error_before_refit": self.error_before_refit,
                "zeros": self.zeros}


def relative_reconstruction_error(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> float:
    """‖XŴ − XW‖_F / ‖XŴ‖_F computed from H = XᵀX without another forward pass (products in fp32, sums in fp64)."""
    dtype = torch.promote_types(torch.float32, hessian.dtype)  # fp32, or fp64 when given an fp64 Hessian
    h, dense = hessian.to(dtype), dense.to(dtype)
    diff = dense - pruned.to(dtype)
    num = ((diff @ h) * diff).sum(dtype=torch.float64).clamp_min(0)
    den = ((dense @ h) * dense).sum(dtype=torch.float64)
    return float((num / den).sqrt()) if den > 0 else float("nan")


def accepts_prior(algorithm) -> bool:
    """Whether ``algorithm.prune`` takes ``prior`` (weights already pruned, to be kept pruned)."""
    return "prior" in inspect.signature(algorithm.prune).parameters


def solve(dense: torch.Tensor, algorithm, stats: LayerStats | None, pattern, post: PostSteps, name: str = "?",
          prior: torch.Tensor | None = None, has_bias: bool = False) -> LayerSolve:
    """The algorithm plus post-steps on one dense weight. ``notes`` holds "seconds" and, when a refit ran,
    "error_before_refit"; ``bias_delta`` what to add to the layer's bias.

    ``prior`` (bool, True = already pruned): those weights stay zero. Methods that accept it choose them first
    (so the count is exact when the target is at least the prior's); for any other method they are zeroed after
    it and its refinement ran (before a refit), which can only add zeros."""
    start = time.perf_counter()
    if prior is not None and accepts_prior(algorithm):
        current = LayerSolve(dense, algorithm.prune(dense, stats, pattern, prior=prior), stats, pattern, has_bias)
    else:
        current = LayerSolve(dense, algorithm.prune(dense, stats, pattern), stats, pattern, has_bias)
    steps = post.steps(algorithm)
    for step in [s for s in steps if s.stage == "refine"]:
        step.run(current)
    if prior is not None:
        current.weight = current.weight.masked_fill(prior, 0.0)
    for step in [s for s in steps if s.stage != "refine"]:
        if step.stage == "refit" and stats is not None and stats.hessian is not None:
            current.notes["error_before_refit"] = relative_reconstruction_error(dense, current.weight, stats.hessian)
        step.run(current)
    current.notes["seconds"] = time.perf_counter() - start
    pruned = current.weight
    if not isinstance(pruned, torch.Tensor) or pruned.shape != dense.shape or not torch.isfinite(pruned).all():
        raise InvalidWeight(algorithm.name, name, tuple(dense.shape), pruned)
    return current


class InvalidWeight(RuntimeError):
    """An algorithm (or step) returned a weight of the wrong shape or with non-finite values."""

    def __init__(self, method: str, layer: str, expected_shape: tuple, got):
        self.layer = layer
        self.shape = tuple(got.shape) if isinstance(got, torch.Tensor) else None
        self.shape_ok = self.shape == expected_shape
        self.finite = bool(torch.isfinite(got).all()) if self.shape_ok else None
        what = (f"not a tensor ({type(got).__name__})" if self.shape is None else
                f"shape {self.shape}, expected {expected_shape}" if not self.shape_ok else "non-finite values")
        super().__init__(f"{method} returned a bad weight for {layer}: {what}")


def solve_weight(dense: torch.Tensor, algorithm, stats: LayerStats | None, pattern, post: PostSteps, name: str = "?",
                 prior: torch.Tensor | None = None):
    """``solve`` as (pruned weight, error before refit or None, seconds)."""
    result = solve(dense, algorithm, stats, pattern, post, name, prior)
    return result.weight, result.notes.get("error_before_refit"), result.notes["seconds"]


def _as_is(adapter: ModelAdapter, name: str, layer, seconds: float = 0.0) -> LayerReport:
    """Report a layer's current state (used where no solve ran)."""
    weight = adapter.get_weight(layer)
    zeros = weight.numel() - int(torch.count_nonzero(weight))
    return LayerReport(name, tuple(weight.shape), zeros / weight.numel(), seconds, zeros=zeros)


def _solve_layer(adapter, name, layer, algorithm, stats: LayerStats | None, pattern, post: PostSteps,
                 prior: torch.Tensor | None = None) -> LayerReport:
    dense = adapter.get_weight(layer)
    dense = dense.to(math_dtype(dense.dtype))
    prior = None if prior is None else prior.to(dense.device)
    bias = getattr(layer, "bias", None)
    result = solve(dense, algorithm, stats, pattern, post, name, prior, has_bias=bias is not None)
    pruned = result.weight
    error = None
    if stats is not None and stats.hessian is not None:
        error = relative_reconstruction_error(dense, pruned, stats.hessian)
    if bias is not None and result.bias_delta is not None:
        bias.data.add_(result.bias_delta.to(bias.dtype))
    adapter.set_weight(layer, pruned)
    zero = adapter.get_weight(layer) == 0
    return LayerReport(name, tuple(dense.shape), float(zero.float().mean()), result.notes["seconds"], error,
                       result.notes.get("error_before_refit"), int(zero.sum()))


def _prune_global(adapter: ModelAdapter, algorithm: PruningAlgorithm, pattern: Pattern,
                  prior_masks: dict | None = None) -> list[LayerReport]:
    """One threshold across all prunable layers (data-free scores only); exact count, ties in layer order.
    Weights in ``prior_masks`` score -inf, so they are pruned first."""
    layers = list(adapter.named_prunable_layers())
    scores = []
    for name, layer in layers:
        weight = adapter.get_weight(layer)
        s = algorithm.scores(weight.to(math_dtype(weight.dtype)), None)
        prior = (prior_masks or {}).get(name)
        scores.append((s if prior is None else s.masked_fill(prior.to(s.device), float("-inf"))).flatten())
    flat = torch.cat(scores)
    k = int(flat.numel() * pattern.sparsity)
    reports = []
    if k == 0:
        return [_as_is(adapter, n, l) for n, l in layers]
    threshold = flat.kthvalue(k).values
    tie_budget = k - int((flat < threshold).sum())
    del flat
    for (name, layer), s in zip(layers, scores):
        start = time.perf_counter()
        pruned_mask = s < threshold
        ties = torch.nonzero(s == threshold).flatten()[:tie_budget]
        pruned_mask[ties] = True
        tie_budget -= ties.numel()
        weight = adapter.get_weight(layer)
        adapter.set_weight(layer, weight.masked_fill(pruned_mask.view_as(weight), 0.0))
        reports.append(_as_is(adapter, name, layer, time.perf_counter() - start))
    return reports


# -- the traversal ---------------------------------------------------------------------------------------------
# Tokens per block forward. CPU: one sequence of 512+ tokens, as fast as 8 on idle cores
# (benchmarks/calibration_batch.py) and it keeps the one-sequence results (batching flips near-tied masks by
# rounding); on busy cores 8 run ~3x faster. CUDA: large batches are the only way to use the GPU.
CPU_BATCH_TOKENS = 512
CUDA_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class EngineOptions:
    """How the engine computes. Only ``batch_size`` and ``compute_dtype`` can change a result, through float
    rounding of the forward passes; where the activations live (device, host memory or disk) never does.

    batch_size: calibration sequences per block forward (None: ~512 tokens on CPU, ~16k on CUDA);
    compute_dtype: dtype of the block forwards and of the activations between blocks (None: the model's). The
    weights the algorithms see and write stay in the model's dtype; statistics are accumulated in fp32;
    max_activation_memory: bytes of host memory the activations may take before they spill to a file
    (None: half the memory available when the run starts); activation_dir: where that file goes (None: TMPDIR);
    cpu_linear: the CPU kernel of the float32 Linear layers and the causal attention in the block forwards and of
    the XᵀX statistics, "auto" | "onednn" | "aten" (engine/linear.py, engine/attention.py; changes results by float
    rounding only, like the batch).
    """
    batch_size: int | None = None
    compute_dtype: str | None = None
    max_activation_memory: int | None = None
    activation_dir: str | None = None
    cpu_linear: str = "auto"

    def __post_init__(self):
        from ..models.loading import DTYPES

        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"calibration batch size must be >= 1, got {self.batch_size}")
        if self.compute_dtype is not None and self.compute_dtype not in DTYPES:
            raise ValueError(f"compute dtype {self.compute_dtype!r} is not one of {sorted(DTYPES)}")
        if self.max_activation_memory is not None and self.max_activation_memory < 1:
            raise ValueError("max activation memory must be a positive number of bytes")
        check_cpu_linear(self.cpu_linear)

    def batch_for(self, seqlen: int, device: torch.device) -> int:
        if self.batch_size is not None:
            return self.batch_size
        tokens = CUDA_BATCH_TOKENS if device.type == "cuda" else CPU_BATCH_TOKENS
        return max(1, tokens // seqlen)

    def dtype(self):
        from ..models.loading import DTYPES
        return None if self.compute_dtype is None else DTYPES[self.compute_dtype]


class ModelBlocks:
    """The in-memory block source and sink: block i is the model's own block, and handing it back keeps it there.

    Any source fits the same three calls: ``load(i)`` returns block i materialised on the CPU, ``done(i, block)``
    takes it back once pruned (a streaming source writes it to the output and frees it), ``close()`` at the end.
    """
    streaming = False

    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter

    def __len__(self) -> int:
        return len(self.adapter.blocks)

    def load(self, i: int) -> nn.Module:
        return self.adapter.blocks[i]

    def done(self, i: int, block: nn.Module) -> None:
        pass

    def close(self) -> None:
        pass


class _Timer:
    """Seconds per phase of the traversal (where the time goes); CUDA phases are synchronised at their ends."""

    def __init__(self, device: torch.device):
        self.seconds: dict[str, float] = {}
        self.cuda = device.type == "cuda"

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def phase(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                if timer.cuda:
                    torch.cuda.synchronize()
                timer.add(name, time.perf_counter() - self.start)

        return _Phase()


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (other C libraries, other systems)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system. A block's temporaries (forward intermediates, Hessians and
    their factors, a few MB to tens of MB each) are freed into glibc's heap, which keeps them; across blocks that
    fragmentation held 60-90 MB of the embedded model's peak RSS. Called once per block: ~1 ms."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _forward_copy(block: nn.Module, dtype) -> nn.Module:
    """The module the forwards run on: the block itself, or a copy in the compute dtype (the block keeps its own
    weights, which the algorithms read and write)."""
    if dtype is None or all(p.dtype == dtype for p in block.parameters() if p.is_floating_point()):
        return block
    return copy.deepcopy(block).to(dtype)


def _collect_stats(adapter, runner: nn.Module, activations: ActivationBuffer, call: BlockCall, needs, batch: int,
                   device, timer: _Timer, wanted=None, kernel: str | None = None) -> dict[str, LayerStats]:
    """Run ``runner`` on every calibration batch, accumulating input statistics per prunable layer (or only for
    the layer names in ``wanted``: structured pruning needs its consumers' inputs alone).

    The first batch runs with recording hooks, to learn which layers are fed the same tensor (they share one
    accumulator) and which prunable layer runs last; later batches stop as soon as that layer's input has been
    seen, so the rest of the block (the last projection, the residual add) is never computed for statistics.
    With ``needs`` empty every batch runs the whole block.
    """
    modules = layers = adapter.prunable_layers(runner)
    n = activations.shape[0]
    seen: dict[str, torch.Tensor] = {}
    handles = [layer.register_forward_pre_hook(lambda m, args, n=name: seen.__setitem__(n, args[0]))
               for name, layer in layers.items()]
    try:
        with torch.no_grad(), cpu_kernels(runner, kernel), timer.phase("stats_forward"):
            adapter.run_block(runner, activations.read(0, min(batch, n)), call)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in layers if name not in seen]
    if missing:
        raise RuntimeError(f"prunable layers {missing} were not called by their block's forward")
    order = list(seen)  # dicts keep insertion order: the order the layers ran in
    leaders: dict[str, str] = {}  # layer name -> name of the layer whose accumulator it shares
    for name in order:
        leaders[name] = next((o for o in leaders if leaders[o] == o and seen[o] is seen[name]), name)
    if wanted is not None:
        unknown = set(wanted) - set(layers)
        if unknown:
            raise ValueError(f"no prunable layers {sorted(unknown)} in this block; it has {sorted(layers)}")
        layers = {name: layers[name] for name in order if name in wanted}
        order = list(layers)
    accumulators = {name: StatsAccumulator(seen[name].shape[-1], needs, device, kernel, math_dtype(seen[name].dtype))
                    for name in dict.fromkeys(leaders[layer] for layer in order)}
    started = time.perf_counter()
    for name, acc in accumulators.items():
        acc.add(seen[name])
    timer.add("stats_accumulate", time.perf_counter() - started)
    seen.clear()

    def accumulate(acc):
        def hook(_module, args):
            started = time.perf_counter()
            acc.add(args[0])
            timer.add("stats_accumulate", time.perf_counter() - started)
        return hook

    def stop(_module, _args):
        raise _StopForward

    handles = [modules[name].register_forward_pre_hook(accumulate(acc)) for name, acc in accumulators.items()]
    if needs:  # with nothing to accumulate the pass runs whole (callers may hook the block's output)
        handles.append(modules[order[-1]].register_forward_pre_hook(stop))
    try:
        with torch.no_grad(), cpu_kernels(runner, kernel), timer.phase("stats_forward"):
            for start in range(min(batch, n), n, batch):
                try:
                    adapter.run_block(runner, activations.read(start, min(start + batch, n)), call)
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    return {name: accumulators[leaders[name]].result() for name in layers}


def embed_inputs(adapter: ModelAdapter, ids: torch.Tensor, batch: int, device, options: EngineOptions):
    """The block calls and the hidden states entering block 0 for every row of ``ids``, the latter in an
    ActivationBuffer in the compute dtype, placed where it fits (see activations.choose_place)."""
    compute_dtype = options.dtype()
    calls = adapter.record_block_calls(ids)
    if compute_dtype is not None:
        calls = [BlockCall(*to_dtype((c.args, c.kwargs), compute_dtype)) for c in calls]
    activations = None
    for start, rows in zip(range(0, ids.shape[0], batch), adapter.iter_block_inputs(ids, batch)):
        dtype = compute_dtype or rows.dtype
        if activations is None:
            shape = (ids.shape[0], ids.shape[1], rows.shape[-1])
            nbytes = shape[0] * shape[1] * shape[2] * torch.empty((), dtype=dtype).element_size()
            place = choose_place(nbytes, device, options.max_activation_memory)
            activations = ActivationBuffer(shape, dtype, place, device, options.activation_dir)
        activations.write(start, rows.to(dtype))
    return calls, activations


def calibrated_blocks(adapter: ModelAdapter, calibration: torch.Tensor | None, needs, device,
                      source=None, options: EngineOptions | None = None, info: dict | None = None, only_layers=None):
    """Yield (index, block, layers, stats) for each block, in order, with the block on ``device``; after the
    caller has modified the block, run it on the calibration activations to produce the next block's inputs (so
    pruning propagates), then hand it back to ``source``.

    ``calibration``: (n, seqlen) token ids, or None when nothing is calibrated (then ``stats`` is None and no
    forward runs). ``source``: where blocks come from and go back to (default: the model's own, in memory).
    ``info``, if given, receives how the engine ran (batch, dtypes, where the activations lived, seconds per phase).
    ``only_layers``: names (relative to the block) whose statistics to collect (None: every prunable layer).
    """
    device = torch.device(device)
    options = options or EngineOptions()
    source = source if source is not None else ModelBlocks(adapter)
    timer = _Timer(device)
    compute_dtype = options.dtype()
    kernel = resolve_cpu_linear(options.cpu_linear, device)
    n_blocks = len(source)
    activations = calls = None
    if calibration is not None:
        n, seqlen = calibration.shape
        batch = options.batch_for(seqlen, device)
        with timer.phase("inputs"):
            calls, activations = embed_inputs(adapter, calibration, batch, device, options)
            if hasattr(source, "release_inputs"):  # a streaming source frees the embeddings now
                source.release_inputs()
        if info is not None:
            info.update({"batch_size": batch, "compute_dtype": str(activations.dtype).replace("torch.", ""),
                         "activations": activations.place, "activation_bytes": activations.nbytes,
                         "cpu_linear": kernel})
    try:
        for i in range(n_blocks):
            with timer.phase("load"):
                block = source.load(i)
                home = next(block.parameters()).device
                block.to(device)
            layers = adapter.prunable_layers(block)
            stats = None
            if calibration is not None:
                call = calls[i].to(device)
                runner = _forward_copy(block, compute_dtype)
                stats = _collect_stats(adapter, runner, activations, call, needs, batch, device, timer, only_layers,
                                       kernel)
                del runner
            started = time.perf_counter()
            yield i, block, layers, stats
            timer.add("solve", time.perf_counter() - started)
            del stats
            if calibration is not None and i + 1 < n_blocks:  # the last block's outputs would feed nothing
                runner = _forward_copy(block, compute_dtype)
                with torch.no_grad(), cpu_kernels(runner, kernel), timer.phase("output_forward"):
                    for start in range(0, n, batch):
                        end = min(start + batch, n)
                        activations.write(start, adapter.run_block(runner, activations.read(start, end), call))
                del runner
            with timer.phase("release"):
                block.to(home)
                source.done(i, block)
                return_freed_memory()
    finally:
        if activations is not None:
            activations.close()
        if info is not None:
            info["seconds"] = {k: round(v, 3) for k, v in timer.seconds.items()}


def prune_model(model, algorithm: PruningAlgorithm, pattern: Pattern, calibration: torch.Tensor | None = None,
                device: str | torch.device = "cpu", progress: bool = True,
                post: PostSteps | None = None, prior_masks: dict[str, torch.Tensor] | None = None, *, source=None,
                options: EngineOptions | None = None, info: dict | None = None, allocation=None) -> list[LayerReport]:
    """Prune every prunable layer of ``model`` in place; returns one report per layer in model order.

    ``calibration`` is a LongTensor (n, seqlen) of token ids, required when the algorithm or ``post`` needs
    statistics from calibration data (inputs or gradients). ``allocation`` (engine/allocation.py) gives each
    layer its own sparsity; None: every layer gets ``pattern``. ``source``: a block source/sink (default: the model's own blocks; models/streaming.py has
    one that reads blocks from disk and writes them out). ``options``: batching, compute dtype, activation memory.
    ``info``, if given, receives how the engine ran (see calibrated_blocks). ``prior_masks`` (layer name -> bool
    (out, in), True = already pruned; see train/masks.py) are kept pruned, so a step of iterative pruning only
    adds zeros.
    """
    priors = prior_masks or {}
    post = post or PostSteps()
    adapter = ModelAdapter(model)
    device = torch.device(device)
    source = source if source is not None else ModelBlocks(adapter)
    needs = post.needs(algorithm)
    if pattern.is_noop and not source.streaming:
        return [_as_is(adapter, n, l) for n, l in adapter.named_prunable_layers()]
    if pattern.scope == "global":
        if needs or "global" not in algorithm.scopes or allocation is not None:
            raise ValueError(f"global scope needs data-free scores, no calibrated post-steps and no allocation; "
                             f"{algorithm.name} with these options does not support it")
        if source.streaming:
            raise ValueError("global scope needs every layer's scores at once, so the whole model in memory; "
                             "use --scope layer or run without --offload disk")
        return _prune_global(adapter, algorithm, pattern, priors)
    if pattern.is_noop:
        needs, allocation = frozenset(), None
    input_needs, gradient_needs = of_source(needs, "inputs"), of_source(needs, "gradients")
    if (input_needs or gradient_needs or allocation is not None) and (
            calibration is None or calibration.ndim != 2 or calibration.shape[0] < 1):
        raise ValueError(f"{algorithm.name} needs calibration token ids of shape (n, seqlen)")
    if (gradient_needs or allocation is not None) and source.streaming:
        raise ValueError("gradient statistics and --allocation owl|search run the whole model (backward pass, "
                         "dense pre-pass), so it must be in memory; run without --offload disk")
    layer_patterns = allocation.patterns(adapter, pattern, calibration, device, progress) if allocation else {}
    from .gradients import clear_cache, collect_gradients
    gradients = collect_gradients(adapter, calibration, gradient_needs, device, progress) if gradient_needs else {}
    if not gradient_needs:
        clear_cache()  # a sweep's previous run's gradient sums: not this run's memory

    def layer_stats(full_name, layer, stats: LayerStats | None) -> LayerStats | None:
        """Input statistics plus the kinds read from the layer and the gradient sums."""
        if not (needs - input_needs):
            return stats
        stats = stats if stats is not None else LayerStats(0)
        for kind in of_source(needs, "layer"):
            stats.extra[kind] = stat_kind(kind).read(layer)
        if full_name in gradients:
            stats.grad_samples = gradients[full_name]["samples"]
            stats.extra.update({k: v for k, v in gradients[full_name].items() if k != "samples"})
        return stats

    reports: list[LayerReport] = []
    bar = tqdm(total=len(source), desc=f"{algorithm.name} {pattern.describe()}", unit="block", disable=not progress)
    blocks = calibrated_blocks(adapter, calibration if input_needs else None, input_needs, device, source, options,
                               info)
    for i, block, layers, stats in blocks:
        for name, layer in layers.items():
            full_name = f"{adapter.family.blocks}.{i}.{name}"
            if pattern.is_noop:
                reports.append(_as_is(adapter, full_name, layer))
            else:
                reports.append(_solve_layer(adapter, full_name, layer, algorithm,
                                            layer_stats(full_name, layer, stats and stats[name]),
                                            layer_patterns.get(full_name, pattern), post, priors.get(full_name)))
            gradients.pop(full_name, None)
        bar.update()
    bar.close()
    return reports
