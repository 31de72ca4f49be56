"""Where a job runs: starting (or joining) Ray, what the cluster has, what "auto" means there.

Shared by the jobs that run on Ray (score, V2S rewrite), so each makes these decisions the same way.
"""

from __future__ import annotations

import os


def start_ray(address: str | None, local_cpus: int) -> None:
    """Join ``address`` (else ``RAY_ADDRESS``), or start a local instance with at least
    ``local_cpus`` logical CPUs: actors each ask for a CPU, and a run whose tasks can never get
    one waits forever, so a small machine gets more logical CPUs than it has cores."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, local_cpus), include_dashboard=False, log_to_driver=True)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def resolve_dtype(dtype: str, on_gpu: bool, gpu_default: str) -> str:
    """``auto`` is the job's own choice on GPUs (``gpu_default``) and float32 on CPUs, where half
    precision is slow or missing; any other value is taken as given."""
    if dtype != "auto":
        return dtype
    return gpu_default if on_gpu else "float32"
