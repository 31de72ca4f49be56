"""Where a job runs: starting (or joining) Ray, what the cluster has, what "auto" means there.

Shared by the jobs that run on Ray (score, V2S rewrite), so each makes these decisions the same way.
"""

from __future__ import annotations

import os


def start_ray(address: str | None, local_cpus: int, progress_bars: bool = False) -> None:
    """Join ``address`` (else ``RAY_ADDRESS``), or start a local instance with at least
    ``local_cpus`` logical CPUs: actors each ask for a CPU, and a run whose tasks can never get
    one waits forever, so a small machine gets more logical CPUs than it has cores.
    ``progress_bars``: Ray Data's own, per operator (the job prints one line of its own)."""
    import ray
    import ray.data

    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, local_cpus), include_dashboard=False, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = progress_bars


def stop_ray() -> None:
    """Disconnect from Ray (and stop a local instance this process started)."""
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def get(method, timeout: float = 60.0):
    """The result of calling a Ray actor's ``method`` with no arguments."""
    import ray

    return ray.get(method.remote(), timeout=timeout)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def resolve_dtype(dtype: str, on_gpu: bool, gpu_default: str) -> str:
    """``auto`` is the job's own choice on GPUs (``gpu_default``) and float32 on CPUs, where half
    precision is slow or missing; any other value is taken as given."""
    if dtype != "auto":
        return dtype
    return gpu_default if on_gpu else "float32"
