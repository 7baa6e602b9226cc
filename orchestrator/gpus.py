"""How many GPUs each run asks Ray for (`cluster.gpus_per_run`), and the checks made once Ray's nodes are known.

Pure functions, no Ray: orchestrator.execution calls them with the GPUs of the cluster's nodes before it
submits anything. The rule for `auto` is models.throughput.gpu_share (docs/gpu.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from proxyscale.models.spec import RunSpec, SpecError
from proxyscale.models.throughput import gpu_share

AUTO = "auto"


def check_setting(value: float | str) -> None:
    """cluster.gpus_per_run on its own (before Ray starts): 'auto' or a number > 0."""
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        raise SpecError(f"cluster.gpus_per_run: {shown} is not allowed; give 'auto' (a share of a GPU chosen from "
                        "the proxy's size, 0 on a cluster without GPUs) or a number > 0 (fractions share a GPU, "
                        "e.g. 0.25: four runs per GPU); for CPU-only runs set train.device=cpu")
    if value > 1 and not float(value).is_integer():
        raise SpecError(f"cluster.gpus_per_run: {value:g} is not allowed; above 1 Ray schedules whole GPUs only "
                        "(give 1, 2, ... or a fraction <= 1)")


def gpus_for_run(value: float | str, spec: RunSpec, largest_node_gpus: float) -> float:
    """The Ray GPU request of one run: the number given, or under 'auto' 0 when the cluster has no GPU or the run
    trains on CPU (train.device=cpu), else gpu_share's 1/k for the proxy's size."""
    if value != AUTO:
        return float(value)
    if largest_node_gpus <= 0 or spec.train.device == "cpu" or spec.simulated is not None:
        return 0.0
    micro = spec.train.micro_batch_tokens or spec.train.batch_tokens
    return gpu_share(spec.model, micro).gpus


def check_cluster(value: float | str, specs: Iterable[RunSpec], node_gpus: list[float]) -> None:
    """Before any task is submitted: the request fits the largest node, and runs that need CUDA have GPUs to get.

    node_gpus: the GPUs of each live node of the Ray cluster.
    """
    largest = max(node_gpus, default=0.0)
    check_setting(value)
    nodes = f"{len(node_gpus)} node{'s' if len(node_gpus) != 1 else ''}"
    if value != AUTO and float(value) > largest:
        if largest > 0:
            fix = f"its largest node has {largest:g}; allowed: 'auto' or a number in (0, {largest:g}]"
        else:
            fix = f"the Ray cluster has no GPU ({nodes}); use 'auto' (0 GPUs here), or join a cluster with GPUs"
        raise SpecError(f"cluster.gpus_per_run: {float(value):g} GPUs per run cannot be scheduled: {fix}")
    for spec in specs:
        if spec.train.device == "cuda" and spec.simulated is None and largest <= 0:
            raise SpecError(f"train.device: 'cuda' but the Ray cluster has no GPU ({nodes}); use train.device=auto "
                            "or cpu, or join a cluster with GPUs (cluster.address)")


def concurrent_runs(value: float | str, specs: Iterable[RunSpec], node_gpus: list[float]) -> int | None:
    """How many runs the cluster's GPUs hold at once: per node, whole multiples of the smallest request (the
    smallest, so mixed sizes are never held back; the bigger ones then wait inside Ray). None when no run asks
    for a GPU."""
    largest = max(node_gpus, default=0.0)
    requests = [r for r in (gpus_for_run(value, spec, largest) for spec in specs) if r > 0]
    if not requests:
        return None
    smallest = min(requests)
    return max(1, sum(int(gpus / smallest + 1e-6) for gpus in node_gpus))
