"""Where a run trains and how: the device (`train.device`), bf16 autocast (`train.precision`), TF32 matmuls,
torch.compile (`train.compile`), batches that reach the GPU without a host round trip, and the peak FLOP/s
MFU is measured against. Nothing here runs at import time; `train_run` calls it.

Every branch that can run on a CPU does (tests/test_device.py): bf16 autocast works on CPU, torch.compile
compiles for CPU, and the device-held batches gather on whichever device they are given.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from proxyscale.models.data import TokenSource, train_batch, train_window_starts
from proxyscale.models.spec import SpecError
from proxyscale.models.throughput import peak_flops_for

COMPILE_BACKEND = "inductor"
"""torch.compile's backend. The CPU test swaps in 'aot_eager' (inductor's C++ build takes minutes on 2 cores)."""
HOLD_ON_DEVICE_BYTES = 2 * 2**30
"""The training tokens are copied to the GPU once when they take at most this much there and at most a tenth of
its memory; larger corpora are read from pinned host memory instead."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(requested: str) -> torch.device:
    """train.device: 'auto' picks CUDA when this process sees a GPU; 'cuda' without one is a SpecError."""
    if requested == "cuda" and not cuda_available():
        raise SpecError("train.device: 'cuda' but this machine has no CUDA device (torch "
                        f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use train.device=auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    return torch.device(requested)


def configure(device: torch.device) -> None:
    """TF32 for the fp32 matmuls that remain under autocast (and the fp32 path) on CUDA."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def uses_bf16(device: torch.device, precision: str) -> bool:
    """train.precision: auto = bf16 on CUDA (when the GPU has bf16), fp32 on CPU."""
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast for the forward pass, or nothing (fp32)."""
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_compile(setting: bool | str, device: torch.device) -> bool:
    """train.compile: auto = on for CUDA, off on CPU (inductor's C++ build costs more than a CPU proxy gains)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """The compiled training forward. Probe steps run the eager module instead (models/train.py), so the graph
    never holds the explicit attention-logit branch and nothing recompiles."""
    return torch.compile(model, backend=COMPILE_BACKEND)


def syncs_every_step(device: torch.device) -> bool:
    """On CPU a float() of the loss costs nothing; on CUDA it drains the queue, so the loop reads the loss and
    the gradient norm (and checks them for NaN) only on log, eval and checkpoint steps."""
    return device.type != "cuda"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """The peak MFU divides by: cluster.peak_flops when set, else the table's bf16 peak for this GPU (None on CPU
    or for an unknown GPU)."""
    if override is not None:
        return float(override)
    return peak_flops_for(device_name(device)) if device.type == "cuda" else None


def _device_dtype(dtype: np.dtype) -> torch.dtype:
    """The smallest torch integer type that holds the tokens and can be an index (uint8, else int32 or int64)."""
    if dtype == np.uint8:
        return torch.uint8
    return torch.int32 if np.dtype(dtype).itemsize <= 2 else torch.int64


def fits_on_device(source: TokenSource, device: torch.device) -> bool:
    if device.type != "cuda" or source.stream is not None:  # data=prepared streams from its shards
        return False
    size = len(source.train) * torch.empty((), dtype=_device_dtype(source.train.dtype)).element_size()
    total = torch.cuda.get_device_properties(device).total_memory
    return size <= min(HOLD_ON_DEVICE_BYTES, total // 10)


class Batches:
    """Training micro-batches on the run's device, identical to models.data.train_batch's (a pure function of
    seed, step and micro-batch).

    held=True: the training tokens are copied to the device once and each batch is gathered there from
    train_batch's window offsets (n_seqs integers cross over per step, asynchronously from pinned memory).
    held=False: the batch is built on the host; on CUDA it is pinned and copied with non_blocking=True, so
    the copy overlaps the previous step's kernels. None: held when the tokens fit (fits_on_device).
    """

    def __init__(self, source: TokenSource, device: torch.device, *, seed: int, n_seqs: int, seq_len: int,
                 held: bool | None = None) -> None:
        self.source, self.device, self.seed, self.n_seqs, self.seq_len = source, device, seed, n_seqs, seq_len
        self.held = fits_on_device(source, device) if held is None else held
        self.pin = device.type == "cuda"
        self.tokens: torch.Tensor | None = None
        if self.held:
            host = torch.from_numpy(np.array(source.train, copy=True)).to(_device_dtype(source.train.dtype))
            self.tokens = host.to(device)
            self.offsets = torch.arange(seq_len + 1, device=device)

    def get(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokens is None:
            x, y = train_batch(self.source, self.seed, step, micro, self.n_seqs, self.seq_len)
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        starts = torch.from_numpy(train_window_starts(self.source, self.seed, step, micro, self.n_seqs, self.seq_len))
        if self.pin:
            starts = starts.pin_memory()
        starts = starts.to(self.device, non_blocking=True)
        window = self.tokens[starts[:, None] + self.offsets].long()
        return window[:, :-1], window[:, 1:]
