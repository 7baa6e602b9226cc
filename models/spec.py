"""Typed, frozen specs for one proxy run.

A run is a pure function of a `RunSpec`. Specs are validated when they are built, so a bad value
fails with a `SpecError` that names the field and the allowed values before anything trains.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

PARAMETRIZATIONS = ("sp", "mup", "completep")
EVAL_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
EVAL_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")
SCHEDULES = ("constant", "cosine", "linear", "wsd")
DECAY_SHAPES = ("linear", "sqrt")
NORMS = ("layernorm", "rmsnorm")
DATA_KINDS = ("stdlib", "memmap", "prepared")
MEMMAP_DTYPES = ("uint16", "uint32")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


class SpecError(ValueError):
    """A spec field holds a value that is not allowed; the message names the field."""


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise SpecError(f"{field_name}: {message}")


def _require_choice(value: str, field_name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SpecError(f"{field_name}: {value!r} is not allowed; choose one of {list(allowed)}{did_you_mean}")


def _require_positive(value: float, field_name: str) -> None:
    _require(value > 0, field_name, f"must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Shape and parametrisation of the decoder-only GPT proxy."""

    width: int = 64
    """d_model, the residual stream width."""
    depth: int = 2
    """Number of transformer blocks."""
    n_heads: int | None = 4
    """Attention heads; give either this or `head_size`."""
    head_size: int | None = None
    """Per-head width; if set, heads = width / head_size (heads then grow with width)."""
    mlp_ratio: float = 4.0
    vocab_size: int = 256
    seq_len: int = 128
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    qk_layernorm: bool = False
    """Normalise queries and keys per head before the dot product (Wortsman et al. 2023)."""
    tied_embeddings: bool = True
    layernorm_scaling: bool = False
    """Scale each block's pre-norm output by 1/sqrt(layer index) ("The curse of depth", 2025)."""
    parametrization: Literal["sp", "mup", "completep"] = "sp"
    base_width: int = 64
    """Width at which mup/completep multipliers are all 1 (the tuned proxy)."""
    base_depth: int = 2
    """Depth at which completep multipliers are all 1."""
    depth_alpha: float = 1.0
    """Residual-branch exponent: branches scale as (base_depth/depth)^alpha. 1 = CompleteP, 0.5 = Depth-muP."""
    init_std: float = 0.02
    """Init std of every weight matrix at the base shape."""

    def __post_init__(self) -> None:
        for name in ("width", "depth", "vocab_size", "seq_len", "base_width", "base_depth"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"model.{name}", f"must be a positive integer, got {value!r}")
        _require_positive(self.mlp_ratio, "model.mlp_ratio")
        _require_positive(self.init_std, "model.init_std")
        _require_choice(self.norm, "model.norm", NORMS)
        _require_choice(self.parametrization, "model.parametrization", PARAMETRIZATIONS)
        _require(0.0 <= self.depth_alpha <= 1.0, "model.depth_alpha", f"must be in [0, 1], got {self.depth_alpha!r}")
        _require(
            (self.n_heads is None) != (self.head_size is None),
            "model.n_heads",
            "give exactly one of model.n_heads and model.head_size (set the other to null)",
        )
        if self.n_heads is not None:
            _require(self.n_heads > 0, "model.n_heads", f"must be a positive integer, got {self.n_heads!r}")
            _require(
                self.width % self.n_heads == 0,
                "model.width",
                f"{self.width} is not divisible by model.n_heads={self.n_heads}; "
                f"allowed widths are multiples of {self.n_heads}",
            )
        else:
            _require(self.head_size > 0, "model.head_size", f"must be a positive integer, got {self.head_size!r}")
            _require(
                self.width % self.head_size == 0,
                "model.width",
                f"{self.width} is not divisible by model.head_size={self.head_size}; "
                f"allowed widths are multiples of {self.head_size}",
            )

    @property
    def heads(self) -> int:
        return self.n_heads if self.n_heads is not None else self.width // self.head_size

    @property
    def d_head(self) -> int:
        return self.width // self.heads

    @property
    def mlp_width(self) -> int:
        return int(round(self.mlp_ratio * self.width))


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Optimiser, schedule, budget and logging of one run."""

    lr: float = 3e-3
    """Peak learning rate at the base shape (mup/completep rescale it per parameter group)."""
    schedule: Literal["constant", "cosine", "linear", "wsd"] = "cosine"
    warmup_steps: int = 20
    decay_fraction: float = 0.2
    """wsd only: the share of steps spent decaying at the end."""
    decay_shape: Literal["linear", "sqrt"] = "linear"
    """wsd only: shape of the final decay: linear, or sqrt for Hägele et al.'s (1 - sqrt) cooldown."""
    init_from: str | None = None
    """Fork: 'RUN_ID@STEP' starts from run RUN_ID's checkpoint at optimiser step STEP (weights, optimizer
    state, RNG; the data position follows from the step). The schedule is this spec's own over all
    `steps`; it must agree with the parent's up to STEP (checked when the sweep is expanded)."""
    min_lr_ratio: float = 0.1
    """Final LR as a fraction of the peak (cosine, linear, wsd)."""
    tokens: int = 1_000_000
    """Training-token budget; fixes the number of steps as tokens // batch_tokens."""
    batch_tokens: int = 4096
    """Tokens per optimiser step (batch size in tokens)."""
    micro_batch_tokens: int | None = None
    """Tokens per forward pass; batch_tokens / micro_batch_tokens is the gradient accumulation."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Max global gradient norm (0 = off)."""
    z_loss: float = 0.0
    """Coefficient of the (log Z)^2 auxiliary loss (0 = off; Wortsman et al. use 1e-4)."""
    eval_interval_tokens: int = 262_144
    eval_batches: int = 8
    """Number of fixed held-out batches averaged at every evaluation."""
    eval_batch_tokens: int | None = None
    """Tokens per held-out batch; None = the micro-batch (so the eval set follows the batch size). Set it when
    runs of different batch sizes must be scored on the same held-out sequences (sweeps/lr_batch.yaml)."""
    log_interval: int = 10
    """Steps between probe/log records."""
    checkpoint_interval: int = 0
    """Steps between checkpoints (0 = only when the run ends)."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when this process sees a GPU, else CPU (docs/gpu.md)."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the training forward; auto = on for CUDA, off on CPU. `auto` hashes as false in run ids, so
    runs recorded before it existed keep their ids (compiling changes no result beyond float rounding)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Matmuls under bf16 autocast (weights, optimizer and loss stay fp32), or fp32 throughout; auto = bf16 on
    CUDA, fp32 on CPU."""
    divergence_factor: float = 1.5
    """A run diverges when its eval loss stays above this factor times its initial eval loss..."""
    divergence_patience: int = 3
    """...for this many consecutive evaluations (NaN or inf ends it at once)."""
    evals: tuple[tuple[str, str], ...] | None = ()
    """Task metrics recorded at every evaluation: a list of 'module:function' (named by the function) or a mapping
    name -> 'module:function'; each is called as f(model, spec=, device=) -> float (models/evals.py). Kept as
    ((name, 'module:function'), ...); null (the config's default) = none."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "evals", parse_evals(self.evals))
        except ValueError as error:
            raise SpecError(f"train.evals: {error}") from None
        _require_positive(self.lr, "train.lr")
        _require_choice(self.schedule, "train.schedule", SCHEDULES)
        _require_choice(self.device, "train.device", DEVICES)
        _require(self.compile is True or self.compile is False or self.compile == "auto", "train.compile",
                 f"{self.compile!r} is not allowed; choose one of ['auto', true, false]")
        _require_choice(self.precision, "train.precision", PRECISIONS)
        for name in ("tokens", "batch_tokens", "eval_interval_tokens", "eval_batches", "log_interval", "divergence_patience"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"train.{name}", f"must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "checkpoint_interval", "seed"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 0, f"train.{name}", f"must be an integer >= 0, got {value!r}")
        _require(0.0 < self.decay_fraction <= 1.0, "train.decay_fraction", f"must be in (0, 1], got {self.decay_fraction!r}")
        _require_choice(self.decay_shape, "train.decay_shape", DECAY_SHAPES)
        _require(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio!r}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1", "beta1 and beta2 must be in [0, 1)")
        _require_positive(self.eps, "train.eps")
        _require(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip!r}")
        _require(self.z_loss >= 0, "train.z_loss", f"must be >= 0 (0 = off), got {self.z_loss!r}")
        _require(self.divergence_factor > 1, "train.divergence_factor", f"must be > 1, got {self.divergence_factor!r}")
        _require(
            self.tokens >= self.batch_tokens,
            "train.tokens",
            f"budget of {self.tokens} tokens is shorter than one step of train.batch_tokens={self.batch_tokens}",
        )
        _require(
            self.warmup_steps < self.steps,
            "train.warmup_steps",
            f"{self.warmup_steps} warmup steps leave no training: the budget gives {self.steps} steps "
            f"(train.tokens // train.batch_tokens); allowed: 0 to {self.steps - 1}",
        )
        if self.eval_batch_tokens is not None:
            _require_positive(self.eval_batch_tokens, "train.eval_batch_tokens")
        if self.micro_batch_tokens is not None:
            _require_positive(self.micro_batch_tokens, "train.micro_batch_tokens")
            _require(
                self.batch_tokens % self.micro_batch_tokens == 0,
                "train.micro_batch_tokens",
                f"{self.micro_batch_tokens} must divide train.batch_tokens={self.batch_tokens}",
            )

        if self.init_from is not None:
            parent, step = parse_init_from(self.init_from)
            _require(
                step < self.steps,
                "train.init_from",
                f"the fork starts at step {step} but its budget train.tokens={self.tokens} gives {self.steps} steps; "
                f"give a budget of more than {step * self.batch_tokens} tokens",
            )
            if self.schedule == "wsd":
                _require(
                    self.decay_start >= step,
                    "train.decay_fraction",
                    f"a cooldown of {self.steps - self.decay_start} steps is longer than the fork's "
                    f"{self.steps - step} steps after step {step}; allowed: decay_fraction <= "
                    f"{(self.steps - step) / self.steps:.4g}, or fork earlier",
                )

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_tokens

    @property
    def decay_start(self) -> int:
        """wsd: the first step of the final decay."""
        return self.steps - max(1, math.ceil(self.decay_fraction * self.steps))

    @property
    def fork_step(self) -> int:
        """The step a fork starts from (0 for a run trained from scratch)."""
        return 0 if self.init_from is None else parse_init_from(self.init_from)[1]


def parse_evals(raw) -> tuple[tuple[str, str], ...]:
    """`train.evals` as ((name, "module:function"), ...), or ValueError naming what is wrong.

    raw: a list of "module:function" (named by the function), or a mapping name -> "module:function".
    """
    if raw is None:
        return ()
    if isinstance(raw, dict):
        pairs = [(str(name), ref) for name, ref in raw.items()]
    elif isinstance(raw, (list, tuple)):
        pairs = []
        for item in raw:
            if isinstance(item, (list, tuple)) and len(item) == 2:  # an already-parsed (name, ref) pair
                pairs.append((str(item[0]), item[1]))
            elif isinstance(item, str):
                pairs.append((item.rpartition(":")[2], item))
            else:
                raise ValueError(f"{item!r} is not a 'module:function' string")
    else:
        raise ValueError(f"must be a list of 'module:function' or a mapping name -> 'module:function', got {raw!r}")
    for name, ref in pairs:
        if not isinstance(ref, str) or not EVAL_REFERENCE.match(ref):
            raise ValueError(f"{ref!r} is not 'module:function' (e.g. proxyscale.models.evals:next_byte_accuracy)")
        if not EVAL_NAME.match(name):
            raise ValueError(f"the name {name!r} of {ref!r} must be letters, digits, '_', '.' or '-'")
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"the name {repeated[0]!r} is given twice; name each metric once (a mapping name -> "
                         "'module:function' can name two functions of one name apart)")
    return tuple(pairs)


def parse_init_from(value: str) -> tuple[str, int]:
    """'RUN_ID@STEP' -> (run id, step), with an error that shows the grammar."""
    run_id, at, step = str(value).rpartition("@")
    if not at or not run_id or not step.isdigit() or int(step) < 1:
        raise SpecError(f"train.init_from: {value!r} is not RUN_ID@STEP (a run id from `proxyscale status DIR` "
                        "and a positive optimiser step, e.g. 3f9c0a1b2d4e5f60@400)")
    return run_id, int(step)


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where tokens come from. `stdlib` needs no download; `memmap` reads a nanoGPT-style token file;
    `prepared` reads the shards `proxyscale prepare-data` wrote (docs/corpora.md)."""

    kind: Literal["stdlib", "memmap", "prepared"] = "stdlib"
    train_path: str | None = None
    """memmap: binary token file for training."""
    val_path: str | None = None
    """memmap: binary token file for evaluation."""
    dtype: Literal["uint16", "uint32"] = "uint16"
    vocab_size: int | None = None
    """memmap: the tokenizer's vocabulary size (must equal model.vocab_size)."""
    val_every: int = 20
    """stdlib: every val_every-th file (by a hash of its path) is held out for evaluation."""
    path: str | None = None
    """prepared: the directory holding manifest.json and the shards."""
    manifest_hash: str | None = None
    """prepared: SHA-256 of the manifest, filled in from data.path at the CLI boundary; part of the run id, so a
    run's id changes with its data, and a run refuses to resume on a manifest that changed under it."""
    val_tokens: int | None = None
    """prepared: tokens of the validation split (from the manifest), so a too-small split is refused up front."""

    def __post_init__(self) -> None:
        _require_choice(self.kind, "data.kind", DATA_KINDS)
        _require_choice(self.dtype, "data.dtype", MEMMAP_DTYPES)
        _require(self.val_every >= 2, "data.val_every", f"must be an integer >= 2, got {self.val_every!r}")
        if self.kind == "memmap":
            _require(bool(self.train_path), "data.train_path", "is required when data.kind='memmap'")
            _require(bool(self.val_path), "data.val_path", "is required when data.kind='memmap'")
            _require(
                self.vocab_size is not None and self.vocab_size > 0,
                "data.vocab_size",
                "is required (a positive integer) when data.kind='memmap'",
            )
        if self.kind == "prepared":
            _require(bool(self.path), "data.path", "is required when data.kind='prepared': a directory made by "
                     "`proxyscale prepare-data INPUT... -o DIR`")
            for name in ("manifest_hash", "vocab_size"):
                _require(getattr(self, name) is not None, f"data.{name}",
                         f"is read from {self.path}/manifest.json when the config is built; set data.path")


CURVE_FORMS = ("tissue", "multipower")


@dataclass(frozen=True, kw_only=True)
class SimulatedSpec:
    """Ground truth of the SIMULATED trainer (`trainer=simulated`), for planner tests and benchmarks.

    A simulated run trains nothing. It reports, at every evaluation step s, a whole curve's worth of
    losses that follow its LR schedule:
        loss(s) = L_curve(N, s) * (1 + lr_penalty * ln(lr / lr_opt(width))^2) * (1 + noise * eps(s)),
    with N = all parameters, lr the peak LR, lr_opt(width) = lr_optimal * (width / lr_base_width)^
    lr_width_exponent (0 = transfers as under muP; about -1 as under SP with Adam; times the optional
    batch and token-budget terms below), eps(s) standard
    normal keyed by (seed, model shape, train.seed, lr, step), and divergence when lr > divergence_lr *
    (width / lr_base_width)^lr_width_exponent. With u_i the LR multiplier of step i (peak 1), D = s *
    batch tokens, S1 = sum_{i<=s} u_i * batch tokens, C_N = anneal * (N / anneal_n_ref)^anneal_size_exponent
    and d_j = u_{j-1} - u_j the drops after warmup, L_curve is one of (`curve_form`):

    - tissue (Tissue et al. 2024 with a size term, pinned to L(N, D)):
        L_curve = E + A / N^alpha + B / D^beta + Phi(the run's LRs to s) - Phi(a cosine of s steps),
        Phi = B k^beta S1^-beta - C_N S2, S2 = sum_j d_j (1 - (j / (s + 1))^(1 / anneal_time)),
      k = (1 + reference_min_lr_ratio) / 2; the cosine has the run's warmup and decays to
      reference_min_lr_ratio. So a finished cosine run to that floor reports exactly
      L(N, D) = E + A / N^alpha + B / D^beta (E, A, B, alpha, beta keep their meaning), a constant
      LR gives the power law E + C_N rho + A / N^alpha + B k^beta S1^-beta, and a drop of the LR is
      realised over about `anneal_time` times the steps already done: a cooldown's gain depends on
      its length.
    - multipower (Luo et al. 2025, deliberately unlike the fitted Tissue form):
        L_curve = E + anneal (1 - reference_min_lr_ratio) + A / N^alpha + B k^beta S1^-beta - C_N LD,
        LD = sum_j d_j (1 - (1 + multipower_c u_j^-multipower_gamma sum_{i=j}^{s} u_i)^-multipower_beta)
      (drops pooled in blocks of 32 steps); a drop realises over a number of STEPS with a power-law
      tail, so finished cosine runs reach L(N, D) only in the long-run limit; use
      models.simulated.true_compute_optimal for the truth's optimum.

    The loss at step s depends only on the truth, N, the LR history up to s and the noise at s, so a
    fork (train.init_from) continues its parent's curve exactly.

    Batch size and depth (all off by default): loss(s) is further multiplied by
    (1 + batch_penalty * ln(B / B_opt(D))^2) * (1 + depth_penalty * ln((width / depth) / aspect_optimal)^2),
    with B = train.batch_tokens, D = train.tokens and B_opt(D) = batch_optimal * (D / knob_tokens_ref)^
    batch_tokens_exponent; lr_opt gains the factors (D / knob_tokens_ref)^lr_tokens_exponent,
    (N / knob_params_ref)^lr_params_exponent (N = all parameters) and, with
    lr_surge_batch = B_s > 0, 2 / (sqrt(B_s / B) + sqrt(B / B_s)); and with batch_noise_scale = B_n > 0 every
    token counts as 1 / (1 + B / B_n) of one in L_curve (S1, D and the cosine reference alike).
    """

    E: float = 1.8172
    A: float = 482.01
    B: float = 2085.43
    alpha: float = 0.3478
    beta: float = 0.3658
    lr_optimal: float = 1e-2
    lr_base_width: int = 32
    lr_width_exponent: float = 0.0
    lr_penalty: float = 0.02
    divergence_lr: float = 0.3
    noise: float = 0.0
    """Relative standard deviation of each reported loss."""
    seed: int = 0
    seconds_per_pflop: float = 0.0
    """Wall time a run takes per 1e15 training FLOPs (0 = instant), for orchestration tests."""
    curve_form: Literal["tissue", "multipower"] = "tissue"
    """How the LR schedule shapes the curve (see above)."""
    anneal: float = 0.5
    """C: nats gained once a drop of the LR from its peak to 0 is fully realised (at N = anneal_n_ref).
    Luo et al.'s 25M curves give about 0.12 where B / D^beta is about 0.2 nats; this truth's B / D^beta
    is 1-6 nats at 1e7-1e9 tokens, and 0.5 keeps a cooldown's gain of the order of the S1 it costs."""
    anneal_size_exponent: float = 0.0
    """The gain scales as (N / anneal_n_ref)^this (Luo et al.'s fits at 25M-400M suggest about 0.13)."""
    anneal_n_ref: float = 2.5e7
    anneal_time: float = 0.05
    """tissue: a drop at step j is realised as 1 - (j / s)^(1 / anneal_time): over ~anneal_time * j steps."""
    reference_min_lr_ratio: float = 0.1
    """The final LR multiplier of the cosine runs whose final losses are exactly L(N, D)."""
    multipower_c: float = 0.112
    multipower_beta: float = 0.583
    multipower_gamma: float = 0.641
    """multipower: Luo et al.'s 25M fit (C = 2.066, beta, gamma) with the LR normalised by its 3e-4 peak."""
    # Batch size and depth (issue 14). The defaults leave every loss above unchanged.
    knob_tokens_ref: float = 1e8
    """Reference run length D_ref (tokens) of the laws in D below."""
    lr_tokens_exponent: float = 0.0
    """lr_opt also scales as (D / knob_tokens_ref)^this, D = the run's train.tokens (Step Law: +0.307)."""
    lr_params_exponent: float = 0.0
    """lr_opt also scales as (N / knob_params_ref)^this, N = all parameters of the run's model (Step Law: -0.713)."""
    knob_params_ref: float = 1e6
    """Reference model size N_ref (parameters) of lr_params_exponent."""
    lr_surge_batch: float = 0.0
    """Adam's surge (Li et al. 2024, papers §5): lr_opt times 2 / (sqrt(B_s / B) + sqrt(B / B_s)), B = batch
    tokens, so the optimal LR rises as sqrt(B) below B_s = this and falls as 1 / sqrt(B) above it (0 = off)."""
    batch_penalty: float = 0.0
    """Loss factor 1 + batch_penalty * ln(B / B_opt(D))^2 (Step Law's convex landscape in log B; 0 = off)."""
    batch_optimal: float = 4096.0
    """B_opt(D) = batch_optimal * (D / knob_tokens_ref)^batch_tokens_exponent, in tokens."""
    batch_tokens_exponent: float = 0.0
    """Step Law: B_opt ~ D^0.571."""
    batch_noise_scale: float = 0.0
    """McCandlish et al. 2018's critical batch B_noise (tokens): a run of D tokens at batch B learns like
    D_eff = D / (1 + B / B_noise) tokens at a tiny batch, along its whole curve (0 = off: D_eff = D)."""
    depth_penalty: float = 0.0
    """Loss factor 1 + depth_penalty * ln((width / depth) / aspect_optimal)^2: at equal N the aspect ratio
    matters (Kaplan et al. 2020: a wide, flat optimum; 0 = off)."""
    aspect_optimal: float = 32.0
    """The width / depth of the best shape at any N."""

    def __post_init__(self) -> None:
        for name in ("E", "A", "B", "lr_optimal", "divergence_lr", "lr_base_width", "anneal_n_ref", "anneal_time",
                     "multipower_c", "multipower_beta"):
            _require_positive(getattr(self, name), f"trainer.{name}")
        for name in ("alpha", "beta"):
            _require(0 < getattr(self, name) <= 3, f"trainer.{name}", f"must be in (0, 3], got {getattr(self, name)!r}")
        for name in ("knob_tokens_ref", "knob_params_ref", "batch_optimal", "aspect_optimal"):
            _require_positive(getattr(self, name), f"trainer.{name}")
        for name in ("lr_tokens_exponent", "lr_params_exponent", "batch_tokens_exponent"):
            _require(abs(getattr(self, name)) <= 3, f"trainer.{name}", f"must be in [-3, 3], got {getattr(self, name)!r}")
        for name in ("lr_penalty", "noise", "seconds_per_pflop", "anneal", "multipower_gamma", "lr_surge_batch",
                     "batch_penalty", "batch_noise_scale", "depth_penalty"):
            _require(getattr(self, name) >= 0, f"trainer.{name}", f"must be >= 0, got {getattr(self, name)!r}")
        _require(isinstance(self.seed, int) and self.seed >= 0, "trainer.seed", f"must be an integer >= 0, got {self.seed!r}")
        _require_choice(self.curve_form, "trainer.curve_form", CURVE_FORMS)
        _require(abs(self.anneal_size_exponent) <= 2, "trainer.anneal_size_exponent",
                 f"must be in [-2, 2], got {self.anneal_size_exponent!r}")
        _require(0 <= self.reference_min_lr_ratio < 1, "trainer.reference_min_lr_ratio",
                 f"must be in [0, 1), got {self.reference_min_lr_ratio!r}")


SIMULATED_KNOB_KEYS = ("knob_tokens_ref", "lr_tokens_exponent", "lr_surge_batch", "batch_penalty", "batch_optimal",
                       "batch_tokens_exponent", "batch_noise_scale", "depth_penalty", "aspect_optimal",
                       "lr_params_exponent", "knob_params_ref")
"""SimulatedSpec keys added with the batch-size and depth effects: left out of run ids at their defaults."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything that determines one run. Its hash is the run's id."""

    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    data: DataSpec = field(default_factory=DataSpec)
    simulated: SimulatedSpec | None = None
    """Set only for the simulated trainer; real runs leave it None (and their ids do not include it)."""
    recipe: str | None = None
    """The recipe of a sweep with `sweep.recipes` (its name: the runs a comparison groups); None otherwise, and then
    not part of the id."""

    def __post_init__(self) -> None:
        _require(self.recipe is None or (isinstance(self.recipe, str) and bool(self.recipe)), "recipe",
                 f"must be a non-empty name or None, got {self.recipe!r}")
        _require(self.simulated is None or not self.train.evals, "train.evals",
                 "the simulated trainer trains no model to evaluate; drop train.evals or use trainer=gpt")
        data_vocab = 256 if self.data.kind == "stdlib" else self.data.vocab_size
        _require(
            self.model.vocab_size == data_vocab,
            "model.vocab_size",
            f"{self.model.vocab_size} does not match the data's vocabulary ({data_vocab} for data.kind={self.data.kind!r})",
        )
        micro = self.train.micro_batch_tokens or self.train.batch_tokens
        if self.data.kind == "prepared" and self.data.val_tokens is not None:
            eval_tokens = self.train.eval_batch_tokens or micro
            needed = eval_tokens + eval_tokens // self.model.seq_len  # each sequence reads seq_len + 1 tokens
            _require(self.data.val_tokens >= needed, "data.path",
                     f"{self.data.path}: the validation split holds {self.data.val_tokens} tokens, fewer than one eval "
                     f"batch ({eval_tokens // self.model.seq_len} sequences of {self.model.seq_len} + 1 = {needed}); "
                     "prepare it with a larger --val-fraction, or lower train.eval_batch_tokens")
        _require(
            micro % self.model.seq_len == 0,
            "train.batch_tokens",
            f"tokens per forward pass ({micro}) must be a multiple of model.seq_len={self.model.seq_len}",
        )
        if self.train.eval_batch_tokens is not None:
            _require(
                self.train.eval_batch_tokens % self.model.seq_len == 0,
                "train.eval_batch_tokens",
                f"{self.train.eval_batch_tokens} must be a multiple of model.seq_len={self.model.seq_len}",
            )

    def to_dict(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        # Keys added after runs were recorded are left out at their defaults, so old runs keep their ids.
        for key, default in (("init_from", None), ("decay_shape", "linear"), ("eval_batch_tokens", None), ("evals", ()),
                             ("precision", "auto")):
            if plain["train"][key] == default:
                del plain["train"][key]
        for key in ("path", "manifest_hash", "val_tokens"):  # data=prepared's keys; other corpora keep their ids
            if plain["data"][key] is None:
                del plain["data"][key]
        if self.recipe is None:
            del plain["recipe"]  # runs outside a recipe sweep keep their ids
        if self.simulated is None:
            del plain["simulated"]  # real runs keep the ids they had before the simulated trainer existed
        else:  # so do simulated runs, for the truth's keys added later (batch size and depth) at their defaults
            for key in SIMULATED_KNOB_KEYS:
                if plain["simulated"][key] == getattr(SimulatedSpec, key):
                    del plain["simulated"][key]
        return plain

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSpec:
        """Build from nested plain dicts, refusing unknown keys with a 'did you mean'."""
        sections = ["model", "train", "data", "simulated", "recipe"]
        unknown_top = set(raw) - set(sections)
        if unknown_top:
            key = sorted(unknown_top)[0]
            raise SpecError(_unknown_key_message(key, sections))
        parts = {}
        for name, spec_cls in (("model", ModelSpec), ("train", TrainSpec), ("data", DataSpec)):
            parts[name] = build_spec(spec_cls, raw.get(name, {}), prefix=name)
        if raw.get("simulated") is not None:
            parts["simulated"] = build_spec(SimulatedSpec, raw["simulated"], prefix="trainer")
        if raw.get("recipe") is not None:
            parts["recipe"] = str(raw["recipe"])
        return cls(**parts)

    def run_id(self) -> str:
        """A stable hash of the canonical spec: the same spec never runs twice."""
        plain = self.to_dict()
        if plain["train"]["compile"] == "auto":  # the default since the CUDA path; ids from before it say false
            plain["train"]["compile"] = False
        canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _unknown_key_message(key: str, allowed: list[str]) -> str:
    hint = difflib.get_close_matches(key.split(".")[-1], allowed, n=1)
    did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"{key}: unknown key{did_you_mean} Allowed: {sorted(allowed)}"


_INT_FIELDS_ACCEPTING_FLOATS = {"tokens", "batch_tokens", "micro_batch_tokens", "eval_interval_tokens", "eval_batch_tokens"}


def build_spec(spec_cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Construct a spec dataclass from a dict, with clear errors for unknown keys and wrong types.

    Token counts may be written as 2e6 in a config: a float that is a whole number is accepted.
    """
    allowed = {f.name: f for f in dataclasses.fields(spec_cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in allowed:
            raise SpecError(_unknown_key_message(f"{prefix}.{key}", list(allowed)))
        kwargs[key] = _coerce(value, allowed[key], f"{prefix}.{key}")
    return spec_cls(**kwargs)


def _coerce(value: Any, spec_field: dataclasses.Field, name: str) -> Any:
    annotation = str(spec_field.type)
    if value is None:
        if "None" in annotation:
            return None
        raise SpecError(f"{name}: must not be null")
    if annotation.startswith("bool"):
        if isinstance(value, bool) or "Literal" in annotation:  # bool | Literal[...]: __post_init__ checks the choice
            return value
        raise SpecError(f"{name}: must be true or false, got {value!r}")
    if annotation.startswith("int"):
        if isinstance(value, bool):
            raise SpecError(f"{name}: must be an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer() and name.split(".")[-1] in _INT_FIELDS_ACCEPTING_FLOATS:
            return int(value)
        if not isinstance(value, int):
            raise SpecError(f"{name}: must be an integer, got {value!r}")
        return value
    if annotation.startswith("float"):
        if isinstance(value, str) and "Literal" in annotation:  # float | Literal[...]: the owner checks the choice
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{name}: must be a number, got {value!r}")
        return float(value)
    if annotation.startswith("Literal") or annotation.startswith("str"):
        if not isinstance(value, str):
            raise SpecError(f"{name}: must be a string, got {value!r}")
    return value
