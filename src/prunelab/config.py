"""Run configuration, validated when built so bad values fail before any model is loaded."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field

from .algorithms import get_algorithm
from .engine.activations import parse_size
from .engine.allocation import OPTION_KEYS as ALLOCATION_OPTION_KEYS
from .engine.allocation import Allocation
from .engine.sequential import EngineOptions, PostSteps
from .models.loading import DEFAULT_MODEL, DTYPES
from .patterns import Pattern

# The embedded default must prune in a few minutes on 2 CPU cores: 64 × 512 calibration tokens (the
# benchmark protocol) instead of the papers' 128 × 2048. Any other model gets the papers' setting.
EMBEDDED_CALIBRATION = (64, 512)
PAPER_CALIBRATION = (128, 2048)
DEFAULT_EVAL_SEQLEN = {DEFAULT_MODEL: 512}
OFFLOAD_MODES = ("auto", "disk", "none")
# False while a sweep driver builds runs that execute elsewhere (Ray workers with GPUs the driver may not have).
_CHECK_DEVICE_HERE = contextvars.ContextVar("prunelab_check_device_here", default=True)


@contextlib.contextmanager
def devices_checked_where_runs_execute():
    """Build PruneConfigs without checking their device on this machine (checked by the worker instead)."""
    token = _CHECK_DEVICE_HERE.set(False)
    try:
        yield
    finally:
        _CHECK_DEVICE_HERE.reset(token)


@dataclass(frozen=True)
class CalibrationConfig:
    corpus: str = "c4"
    split: str = "train"
    samples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError(f"calibration samples must be >= 1, got {self.samples}")
        if self.seqlen < 2:
            raise ValueError(f"calibration seqlen must be >= 2, got {self.seqlen}")


@dataclass(frozen=True)
class PruneConfig:
    method: str
    model: str = DEFAULT_MODEL
    sparsity: float | None = None
    pattern: str = "unstructured"
    scope: str | None = None  # None: the method's default (Wanda: row, others: layer)
    method_options: dict = field(default_factory=dict)
    calibration: CalibrationConfig | None = None  # None: the default for the model (see above)
    device: str | None = None  # None: CUDA when available, else CPU
    dtype: str = "float32"
    trust_remote_code: bool = False
    refine: str | None = None  # "dsnot": revise the method's mask (DSnoT) before saving
    refit: bool = False  # least-squares weights on the final support (PCG)
    diagnostics: bool | None = None  # per-layer reconstruction error; None: whenever XᵀX is collected anyway
    bias_correction: bool | None = None  # None: the method's default (MAMA: on)
    structure: str | None = None  # channels | heads | channels,heads | blocks: remove whole units (structured.py)
    # Unstructured: per-layer sparsity uniform (None) | owl | search (engine/allocation.py), options owl_m,
    # owl_lambda, search_budget, ...; structured: uniform (None) or adaptive (FLAP's per-block widths).
    allocation: str | None = None
    allocation_options: dict = field(default_factory=dict)
    # How the engine computes (engine/sequential.py EngineOptions); offload and memory never change a result.
    calib_batch_size: int | None = None  # calibration sequences per block forward (None: ~512 tokens CPU, 16k CUDA)
    compute_dtype: str | None = None  # dtype of block forwards (None: the model's); statistics fp32 (fp64 for fp64)
    cpu_linear: str = "auto"  # kernel of block-forward Linears, attention, XᵀX: auto/onednn/aten (engine/linear.py)
    offload: str = "auto"  # "disk": stream blocks from disk; "none": load the model; "auto": disk when too big
    offload_share: float = 0.5  # "auto" streams when the weights exceed this share of available memory
    max_activation_memory: int | str | None = None  # host memory for activations before they spill to disk

    def __post_init__(self):
        method_options, allocation_options = split_allocation_options(self.method_options)
        if allocation_options:  # --opt owl_lambda=0.1 lands here; it belongs to the allocation
            object.__setattr__(self, "method_options", method_options)
            object.__setattr__(self, "allocation_options", {**self.allocation_options, **allocation_options})
        if self.allocation == "uniform":
            object.__setattr__(self, "allocation", None)  # one spelling of the default (run keys)
        if self.structure is not None:
            if self.allocation_options:
                raise ValueError(f"allocation options {sorted(self.allocation_options)} are for unstructured "
                                 "--allocation owl|search")
            self.structured_spec()  # raises on bad structure / method / sparsity / options
            if self.pattern != "unstructured" or self.scope is not None or self.refine is not None:
                raise ValueError("--pattern, --scope and --refine are for unstructured pruning; with --structure the "
                                 "units removed are whole channels, heads or blocks")
        else:
            algorithm = get_algorithm(self.method, **self.method_options)  # raises on unknown method/options
            if self.scope is not None and self.scope not in algorithm.scopes:
                raise ValueError(f"{self.method} supports scopes {algorithm.scopes}, not {self.scope!r}")
            pattern = self.pattern_obj()  # raises on bad sparsity / pattern
            post = self.post_steps()  # raises on unknown refinement
            if pattern.scope == "global" and post.needs(algorithm):
                raise ValueError("global scope works with data-free scores only; drop --refine/--refit/--diagnostics")
            self.allocation_obj().check(pattern)  # raises on unknown allocation / options, or N:M and global
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {self.offload!r}")
        if not 0 < self.offload_share <= 1:
            raise ValueError(f"offload share must be in (0, 1], got {self.offload_share}")
        object.__setattr__(self, "max_activation_memory", parse_size(self.max_activation_memory))
        self.engine_options()  # raises on a bad batch size or compute dtype
        if self.calibration is None:
            n, seqlen = EMBEDDED_CALIBRATION if self.model == DEFAULT_MODEL else PAPER_CALIBRATION
            object.__setattr__(self, "calibration", CalibrationConfig(samples=n, seqlen=seqlen))
        import torch
        if self.device is None:
            object.__setattr__(self, "device", "cuda" if torch.cuda.is_available() else "cpu")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device {self.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if _CHECK_DEVICE_HERE.get():
            self.check_device()

    def check_device(self) -> None:
        """Fail early where the run will execute (a sweep on Ray checks on the worker, not on the driver)."""
        import torch
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available here; use --device cpu")
        from .engine.linear import resolve_cpu_linear
        resolve_cpu_linear(self.cpu_linear, self.device)  # raises when oneDNN is asked for and absent

    def algorithm(self):
        return get_algorithm(self.method, **self.method_options)

    def pattern_obj(self) -> Pattern:
        scope = self.scope or get_algorithm(self.method, **self.method_options).default_scope
        return Pattern.parse(self.sparsity, self.pattern, scope)

    def engine_options(self) -> EngineOptions:
        return EngineOptions(batch_size=self.calib_batch_size, compute_dtype=self.compute_dtype,
                             max_activation_memory=self.max_activation_memory, cpu_linear=self.cpu_linear)

    def post_steps(self) -> PostSteps:
        return PostSteps(self.refine, self.refit, self.diagnostics, self.bias_correction)

    def structured_spec(self):
        """The structured-pruning settings (``structure`` set); method options: round_to, dampening."""
        from .engine.structured import StructuredSpec

        if self.sparsity is None:
            raise ValueError("structured pruning needs --sparsity: the fraction of decoder-block parameters to remove")
        try:
            return StructuredSpec(self.structure, float(self.sparsity), self.method, refit=self.refit,
                                  bias=self.bias_correction, allocation=self.allocation or "uniform",
                                  diagnostics=self.diagnostics, **self.method_options)
        except TypeError as exc:
            raise ValueError(f"bad options for structured {self.method}: {exc}; it accepts round_to, dampening") from None

    def allocation_obj(self) -> Allocation:
        return Allocation(self.allocation or "uniform", **self.allocation_options)

    @property
    def needs_calibration(self) -> bool:
        from .stats import needs_calibration

        if self.structure is not None:
            return self.structured_spec().needs_calibration
        return (needs_calibration(self.post_steps().needs(self.algorithm())) or self.allocation is not None) \
            and not self.pattern_obj().is_noop

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["allocation_options"]:
            del d["allocation_options"]  # the default: records and run keys stay as before
        if self.structure is not None:
            d["structured_resolved"] = self.structured_spec().to_dict()
        else:
            d["pattern_resolved"] = self.pattern_obj().to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PruneConfig":
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        if isinstance(d.get("calibration"), dict):
            d["calibration"] = CalibrationConfig(**d["calibration"])
        return cls(**d)


def split_allocation_options(options: dict) -> tuple[dict, dict]:
    """Method options and allocation options (owl_m, owl_lambda, search_*) from one ``--opt`` dict."""
    allocation = {k: v for k, v in options.items() if k in ALLOCATION_OPTION_KEYS}
    return {k: v for k, v in options.items() if k not in allocation}, allocation
