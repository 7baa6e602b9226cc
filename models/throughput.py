"""Throughput arithmetic, free of torch: MFU (nanoGPT's `estimate_mfu`), the peak FLOP/s of known GPUs, and
the share of a GPU a proxy asks Ray for (`cluster.gpus_per_run=auto`).

MFU, written out as nanoGPT's `estimate_mfu` (PaLM appendix B) with the attention term:

    flops_per_token = 6 * N + 12 * L * H * Q * T     (models.flops.flops_per_token)
      N = the matmul parameters (non-embedding + the head's vocab x width matmul; nanoGPT's
          get_num_params(), which counts the tied wte and leaves out wpe),
      L = depth, H = heads, Q = head size (H * Q = width), T = seq_len
    achieved FLOP/s = flops_per_token * tokens per second of training
    MFU = achieved FLOP/s / the device's peak (bf16 dense)

Tokens per second count only training steps (`train_seconds`: evaluations and checkpoints are left out,
probe steps are in) and only the tokens this process trained (a fork's own tokens, not its parent's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxyscale.models.flops import count_parameters, flops_per_token
from proxyscale.models.spec import ModelSpec

PEAK_BF16_FLOPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    # (substrings of torch.cuda.get_device_name(), all lower case; dense bf16 FLOP/s; the source). First match wins,
    # so the more specific names come first ("h100 pcie" before "h100", "a100" before "a10", "l40s" before "l4").
    (("gh200",), 989e12, "GH200 datasheet: H100 SXM-class, 989 TFLOPS dense"),
    (("h200", "nvl"), 836e12, "H200 NVL datasheet: 1,671 TFLOPS with sparsity"),
    (("h200",), 989e12, "H200 SXM datasheet: 1,979 TFLOPS with sparsity"),
    (("h100", "nvl"), 835e12, "H100 NVL datasheet: 1,671 TFLOPS with sparsity, per GPU"),
    (("h100", "pcie"), 756e12, "H100 PCIe datasheet: 1,513 TFLOPS with sparsity"),
    (("h100",), 989e12, "H100 SXM datasheet: 1,979 TFLOPS with sparsity"),
    (("b200",), 2.25e15, "HGX B200: 4.5 PFLOPS with sparsity, per GPU"),
    (("a100",), 312e12, "A100 datasheet (SXM and PCIe): 312 TFLOPS"),
    (("a40",), 149.7e12, "A40 datasheet: 149.7 TFLOPS"),
    (("a30",), 165e12, "A30 datasheet: 165 TFLOPS"),
    (("a10",), 125e12, "A10 datasheet: 125 TFLOPS (not the A10G: see docs/gpu.md)"),
    (("l40s",), 362e12, "L40S datasheet: 733 TFLOPS with sparsity"),
    (("l4",), 121e12, "L4 datasheet: 242 TFLOPS with sparsity"),
    (("rtx 4090",), 165.2e12, "Ada whitepaper: RTX 4090, FP32 accumulate"),
)


def peak_flops_for(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named as torch.cuda.get_device_name() names it, or None when unknown.

    The A10G is deliberately not matched (its published bf16 figures disagree); nor is a CPU.
    """
    name = device_name.lower()
    if "a10g" in name:
        return None
    for keys, flops, _source in PEAK_BF16_FLOPS:
        if all(_has_word(name, key) for key in keys):
            return flops
    return None


def _has_word(name: str, key: str) -> bool:
    """`key` in `name` as a whole word ('a10' matches 'nvidia a10', not 'a100' or 'a10g'; 'h200' not 'gh200')."""
    start = name.find(key)
    while start >= 0:
        end = start + len(key)
        if (start == 0 or not name[start - 1].isalnum()) and (end == len(name) or not name[end].isalnum()):
            return True
        start = name.find(key, start + 1)
    return False


def model_flops_utilization(model: ModelSpec, tokens_per_second: float, peak_flops: float | None) -> float | None:
    """MFU = flops_per_token(model) * tokens_per_second / peak_flops (see the module docstring); None without a peak."""
    if peak_flops is None or not peak_flops > 0 or not math.isfinite(tokens_per_second):
        return None
    return flops_per_token(model) * tokens_per_second / peak_flops


# --- cluster.gpus_per_run=auto -------------------------------------------------------------------------

MAX_RUNS_PER_GPU = 8
"""At most this many proxies share one GPU (each process holds a CUDA context of ~0.5-1 GiB, and without MPS
their kernels time-slice)."""
REFERENCE_GPU_BYTES = 24 * 2**30
"""The memory the rule plans with: 24 GiB, the smallest common training GPU (L4, A10G), so a share that fits
there fits on an A100 or H100 too."""
PROCESS_OVERHEAD_BYTES = 2**30
"""A run's fixed cost on the GPU: the CUDA context, cuBLAS workspaces, the allocator's slack."""
FILL_FLOPS = 8e12
"""The FLOPs of one forward+backward that keep a GPU busy on their own: 20 ms at 40% of an H100's 989 TFLOPS.
A micro-batch of less work leaves the GPU idle between kernel launches, for other proxies to use."""


@dataclass(frozen=True)
class GpuShare:
    """What `gpu_share` decided and why (for the plan and docs/gpu.md)."""

    gpus: float
    """The Ray request: 1 / runs_per_gpu, rounded down to 4 decimals."""
    runs_per_gpu: int
    memory_bytes: float
    memory_share: float
    compute_share: float


def training_memory_bytes(model: ModelSpec, micro_batch_tokens: int) -> float:
    """A generous estimate of one run's GPU memory: 16 bytes per parameter (fp32 weights and gradients, AdamW's two
    moments), 34 bytes per token, layer and width of bf16 activations (Korthikanti et al. 2022, with flash attention
    storing no score matrix), 10 bytes per token and vocabulary entry of logits (bf16, their fp32 copy and its
    gradient), and the process's fixed overhead."""
    params = count_parameters(model).total
    activations = 34.0 * micro_batch_tokens * model.depth * model.width
    logits = 10.0 * micro_batch_tokens * model.vocab_size
    return 16.0 * params + activations + logits + PROCESS_OVERHEAD_BYTES


def gpu_share(model: ModelSpec, micro_batch_tokens: int) -> GpuShare:
    """The fraction of a GPU one run asks for under cluster.gpus_per_run=auto.

    share = max(memory / 24 GiB, FLOPs of one micro-batch's forward+backward / FILL_FLOPS); then
    k = floor(1 / share) runs share a GPU, k in [1, MAX_RUNS_PER_GPU], and the request is 1 / k (so k requests
    fill one GPU in Ray's fractional accounting).
    """
    memory = training_memory_bytes(model, micro_batch_tokens)
    memory_share = memory / REFERENCE_GPU_BYTES
    compute_share = flops_per_token(model) * micro_batch_tokens / FILL_FLOPS
    share = max(memory_share, compute_share)
    runs = max(1, min(MAX_RUNS_PER_GPU, math.floor(1.0 / share))) if share > 0 else MAX_RUNS_PER_GPU
    # Rounded down to Ray's resource precision (1e-4), so k requests always fit on one GPU (3 x 0.3333 <= 1).
    return GpuShare(gpus=math.floor(1e4 / runs) / 1e4, runs_per_gpu=runs, memory_bytes=memory, memory_share=memory_share,
                    compute_share=compute_share)
