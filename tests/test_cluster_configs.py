"""The cluster files (cluster/, requirements/gpu.txt) are ones a cluster accepts: every YAML parses,
Kubernetes' own objects validate against Kubernetes' schemas (kubernetes-validate, offline), the
RayJob uses only fields of the KubeRay CRD it targets, every job command parses with the job's own
parser and agrees with the resources it is given, and the image recipe installs what it should.

What needs the package index is not here: `make check-gpu-requirements` resolves requirements/gpu.txt.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qeval_ray.config import ScoreConfig, parse_score_args, score_parser

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
NIGHT = "2026-12-02"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these files are written for (CronJob timeZone is GA since 1.27)
PLACEHOLDER = re.compile(r"REPLACE-[a-z0-9-]+")


def rayjob(night: str = NIGHT) -> dict:
    """cluster/rayjob.yaml as the nightly CronJob renders it (sed s/@DATE@/NIGHT/g)."""
    return yaml.safe_load((CLUSTER / "rayjob.yaml").read_text().replace("@DATE@", night))


def entrypoint_config(spec: dict) -> ScoreConfig:
    argv = shlex.split(spec["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/app/jobs/score.py"]  # where cluster/Dockerfile puts the job
    return parse_score_args(argv[2:])  # the job's own parser: exits (fails the test) on an unknown option


def cronjob_objects() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "nightly-cronjob.yaml").read_text()) if d]


def k8s_validate(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises ValidationError


# --- the RayJob against KubeRay's CRD ----------------------------------------------------------------

# KubeRay v1.7.0, ray-operator/config/crd/bases/ray.io_rayjobs.yaml (version v1, openAPIV3Schema),
# read 2026-12-02: the fields this RayJob uses outside its pod templates, with their types; []
# marks a list's items. The pod templates are core/v1 PodTemplateSpecs, validated below with
# Kubernetes' own schema. Any other field fails the test: look it up in that file before adding it.
KUBERAY_RELEASE = "v1.7.0"
RAYJOB_FIELDS = {
    "spec.entrypoint": str,
    "spec.submissionMode": str,  # default K8sJobMode; also HTTPMode, InteractiveMode, SidecarMode
    "spec.shutdownAfterJobFinishes": bool,
    "spec.ttlSecondsAfterFinished": int,
    "spec.activeDeadlineSeconds": int,
    "spec.backoffLimit": int,
    "spec.rayClusterSpec.rayVersion": str,
    "spec.rayClusterSpec.enableInTreeAutoscaling": bool,
    "spec.rayClusterSpec.autoscalerOptions.upscalingMode": str,  # enum below
    "spec.rayClusterSpec.autoscalerOptions.idleTimeoutSeconds": int,
    "spec.rayClusterSpec.headGroupSpec.rayStartParams": dict,  # additionalProperties: string
    "spec.rayClusterSpec.headGroupSpec.template": dict,
    "spec.rayClusterSpec.workerGroupSpecs[].groupName": str,
    "spec.rayClusterSpec.workerGroupSpecs[].replicas": int,
    "spec.rayClusterSpec.workerGroupSpecs[].minReplicas": int,
    "spec.rayClusterSpec.workerGroupSpecs[].maxReplicas": int,
    "spec.rayClusterSpec.workerGroupSpecs[].rayStartParams": dict,  # additionalProperties: string
    "spec.rayClusterSpec.workerGroupSpecs[].template": dict,
}
UPSCALING_MODES = ("Default", "Aggressive", "Conservative")
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
# The same release's validation (ray-operator/controllers/ray/utils/validation.go, constant.go):
MAX_RAYJOB_NAME = 47  # MaxRayClusterNameLength (53) - 6; a DNS-1035 label
WORKER_REQUIRED = ("groupName", "minReplicas", "maxReplicas", "template")


def leaf_paths(node, path=""):
    """(dotted path, value) of every field, stopping at pod templates and string maps."""
    if isinstance(node, dict) and not path.endswith(("template", "rayStartParams")):
        for key, value in node.items():
            yield from leaf_paths(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            yield from leaf_paths(item, path + "[]")
    else:
        yield path, node


def test_rayjob_uses_only_fields_of_the_kuberay_crd():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    seen = set()
    for path, value in leaf_paths({"spec": job["spec"]}):
        assert path in RAYJOB_FIELDS, f"{path}: not a field of the RayJob CRD in KubeRay {KUBERAY_RELEASE}"
        expected = RAYJOB_FIELDS[path]
        assert isinstance(value, expected) and not (expected is int and isinstance(value, bool)), (path, value)
        seen.add(path)
    assert job["spec"]["submissionMode"] in SUBMISSION_MODES
    assert job["spec"]["rayClusterSpec"]["autoscalerOptions"]["upscalingMode"] in UPSCALING_MODES
    cluster = job["spec"]["rayClusterSpec"]
    for params in [cluster["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in params.values()), params  # the CRD takes strings only
    for group in cluster["workerGroupSpecs"]:
        assert all(key in group for key in WORKER_REQUIRED), group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    name = job["metadata"]["name"]
    assert len(name) <= MAX_RAYJOB_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_rayjob_pod_templates_validate_against_kubernetes():
    cluster = rayjob()["spec"]["rayClusterSpec"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    for name, group in groups:
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"ray-{name}"},
                      "template": group["template"]})


def test_kubernetes_validate_rejects_what_kubernetes_would():
    """The validator does check: a misspelt field and a wrong type are refused."""
    import kubernetes_validate

    template = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    for broken in ({**template, "spec": {**template["spec"], "serviceAcountName": "x"}},
                   {**template, "spec": {**template["spec"], "containers": "ray-head"}}):
        with pytest.raises(kubernetes_validate.ValidationError):
            k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": broken})


def pods(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    out = {"head": {"group": cluster["headGroupSpec"], "pod": cluster["headGroupSpec"]["template"]["spec"]}}
    for group in cluster["workerGroupSpecs"]:
        out[group["groupName"]] = {"group": group, "pod": group["template"]["spec"]}
    return out


def quantity(text: str) -> float:
    """A Kubernetes quantity (8, 32Gi, 500m) as a number (bytes, cores)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    return float(match.group(1)) * units.get(match.group(2), 1)


def test_rayjob_groups_agree_with_the_entrypoint():
    job = rayjob()
    config = entrypoint_config(job)
    groups = pods(job)
    gpu = groups["gpu"]
    limits = gpu["pod"]["containers"][0]["resources"]["limits"]
    gpus_per_pod = int(limits["nvidia.com/gpu"])
    # Every GPU scores and every actor gets its GPUs: the GPU group is fixed at what --concurrency needs.
    assert gpu["group"]["minReplicas"] == gpu["group"]["maxReplicas"] == gpu["group"]["replicas"]
    assert config.concurrency * config.num_gpus_per_actor == gpu["group"]["replicas"] * gpus_per_pod
    assert config.num_gpus_per_actor == config.tensor_parallel_size
    assert gpus_per_pod % config.num_gpus_per_actor == 0  # an actor's GPUs are on one pod
    actors_per_pod = gpus_per_pod // config.num_gpus_per_actor
    assert actors_per_pod * config.num_cpus_per_actor < quantity(limits["cpu"])  # CPUs left for decoding
    # Only the GPU pods have GPUs; the head runs the driver only.
    for name, group in groups.items():
        has_gpus = "nvidia.com/gpu" in group["pod"]["containers"][0]["resources"]["limits"]
        assert has_gpus == (name == "gpu"), name
    assert groups["head"]["group"]["rayStartParams"]["num-cpus"] == "0"
    assert config.engine == "vllm" and config.output.startswith("s3://")


def test_rayjob_is_dated_and_autoscaled_where_replicas_vary():
    job = rayjob("2031-01-17")
    config = entrypoint_config(job)
    assert config.input.endswith("/manifests/2031-01-17.parquet") and config.output.endswith("/scores/2031-01-17/")
    assert job["metadata"]["name"].endswith("2031-01-17")
    assert "2031-01-17" not in rayjob()["spec"]["entrypoint"]  # nothing hard-coded: it all comes from @DATE@
    cluster = job["spec"]["rayClusterSpec"]
    varying = [g["groupName"] for g in cluster["workerGroupSpecs"] if g["minReplicas"] != g["maxReplicas"]]
    assert varying == ["decode"] and cluster["enableInTreeAutoscaling"] is True
    assert job["spec"]["backoffLimit"] >= 1  # a retry resumes (the job's own resume)


def test_rayjob_pods_have_shm_storage_role_token_and_model_cache():
    job = rayjob()
    accounts = {d["metadata"]["name"] for d in cronjob_objects() if d["kind"] == "ServiceAccount"}
    images = set()
    for name, group in pods(job).items():
        pod, container = group["pod"], group["pod"]["containers"][0]
        images.add(container["image"])
        assert pod["serviceAccountName"] == "qeval-ray" and "qeval-ray" in accounts, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory", name
        object_store = float(group["group"]["rayStartParams"].get("object-store-memory", 0))
        assert object_store < quantity(shm["sizeLimit"]) < quantity(container["resources"]["limits"]["memory"]), name
        if name == "decode":
            continue  # decodes media: no model
        env = {e["name"]: e for e in container["env"]}
        token = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token["optional"] is True and "value" not in env["HF_TOKEN"]  # from a Secret, never inline
        if name == "gpu":  # where the engines load: the node's cache volume holds HF_HOME and QEVAL_RAY_CACHE
            cache = next(path for path, volume in mounts.items() if volume == "model-cache")
            assert env["HF_HOME"]["value"].startswith(cache + "/")
            assert env["QEVAL_RAY_CACHE"]["value"].startswith(cache + "/")
            assert "hostPath" in volumes["model-cache"] or "persistentVolumeClaim" in volumes["model-cache"]
    assert len(images) == 1  # one image everywhere


def test_placeholders_are_marked_and_listed_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name in ("rayjob.yaml", "nightly-cronjob.yaml", "cluster.yaml"):
        text = (CLUSTER / name).read_text()
        assert "my-registry" not in text and ":latest" not in text and "run-42" not in text
        for placeholder in set(PLACEHOLDER.findall(text)):
            assert placeholder in readme, f"{placeholder} ({name}) is not explained in the README"
    assert {"REPLACE-registry", "REPLACE-bucket", "REPLACE-gpu-product"} <= set(PLACEHOLDER.findall(
        (CLUSTER / "rayjob.yaml").read_text()))


# --- the nightly CronJob --------------------------------------------------------------------------


def test_nightly_objects_validate_against_kubernetes():
    objects = cronjob_objects()
    assert sorted(d["kind"] for d in objects) == ["CronJob", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount"]
    for obj in objects:
        k8s_validate(obj)


def test_nightly_cronjob_renders_tonights_rayjob_with_the_right_permissions():
    objects = {(d["kind"], d["metadata"]["name"]): d for d in cronjob_objects()}
    cron = objects["CronJob", "qeval-nightly"]["spec"]
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["timeZone"]
    render, apply = pod["initContainers"][0], pod["containers"][0]
    # The render step substitutes @DATE@, the placeholder rayjob.yaml uses, with the date in the zone.
    script = render["command"][-1]
    assert 's/@DATE@/$(date -u +%F)/g' in script and cron["timeZone"] == "Etc/UTC"
    assert "@DATE@" in (CLUSTER / "rayjob.yaml").read_text()
    assert apply["command"][:2] == ["kubectl", "apply"]
    for container in (render, apply):
        assert ":" in container["image"] and not container["image"].endswith(":latest")
    template = next(v for v in pod["volumes"] if v["name"] == "template")["configMap"]["name"]
    assert template == "qeval-rayjob-template"
    # It runs as an account that may create RayJobs (and nothing else).
    binding = objects["RoleBinding", "qeval-nightly-submitter"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    role = objects["Role", binding["roleRef"]["name"]]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                              "verbs": ["get", "list", "create", "patch"]}]


def test_render_with_sed_gives_a_valid_rayjob(tmp_path):
    """The CronJob's own render command (busybox sed there, sed here) on the template."""
    script = next(d for d in cronjob_objects() if d["kind"] == "CronJob")["spec"]["jobTemplate"]["spec"][
        "template"]["spec"]["initContainers"][0]["command"][-1]
    (tmp_path / "template").mkdir()
    (tmp_path / "rendered").mkdir()
    (tmp_path / "template" / "rayjob.yaml").write_text((CLUSTER / "rayjob.yaml").read_text())
    script = script.replace("/template/", f"{tmp_path}/template/").replace("/rendered/", f"{tmp_path}/rendered/")
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    rendered = (tmp_path / "rendered" / "rayjob.yaml").read_text()
    assert "@DATE@" not in rendered
    today = subprocess.run(["date", "-u", "+%F"], capture_output=True, text=True).stdout.strip()
    config = entrypoint_config(yaml.safe_load(rendered))
    assert config.output.endswith(f"/scores/{today}/")


# --- cluster launcher, runtime environment, the GPU package set ---------------------------------------


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)", line)
            assert match, f"{path.name}: not pinned: {line!r}"
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            assert name not in out, f"{path.name}: {name} twice"
            out[name] = match.group(3)
    return out


def test_gpu_requirements_pin_everything_as_the_cpu_set_does():
    import tomllib

    gpu, cpu = pins(REPO / "requirements" / "gpu.txt"), pins(REPO / "requirements" / "cpu.txt")
    drift = {name: (cpu[name], gpu[name]) for name in set(cpu) & set(gpu) if cpu[name] != gpu[name]}
    assert not drift, f"requirements/gpu.txt and cpu.txt pin these differently (cpu, gpu): {drift}"
    # vLLM's CUDA build of the release the CPU tests run; torch and transformers pinned as there.
    vllm_cpu = re.search(r"vllm-cpu==(\S+)", (REPO / "Makefile").read_text()).group(1)
    assert gpu["vllm"] == vllm_cpu and "vllm-cpu" not in gpu
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra == [f"vllm=={vllm_cpu}"]  # `pip install qeval-ray[vllm]` gets the same vLLM
    for name in ("torch", "torchvision", "transformers", "ray", "qwen-vl-utils", "huggingface-hub", "numpy"):
        assert gpu[name] == cpu[name], name
    # Everything the package itself requires is in the set (pyproject's names, pinned).
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["s3"]:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()
        assert name in gpu, f"{name} (pyproject.toml) is not in requirements/gpu.txt"
    assert "moto" not in gpu and "pytest" not in gpu  # test tools stay out of the image


def test_launcher_and_runtime_env_install_the_gpu_set():
    launcher = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    assert launcher["head_node_type"] in launcher["available_node_types"]
    installs = [c for c in launcher["setup_commands"] if "pip install" in c]
    assert installs and all("--no-deps -r ~/qeval-ray/requirements/gpu.txt" in c for c in installs)
    assert launcher["file_mounts"]["/home/ubuntu/qeval-ray/requirements"] == "requirements"
    gpu_nodes = {n: t for n, t in launcher["available_node_types"].items() if t["resources"].get("GPU")}
    assert gpu_nodes, "no GPU node type"
    for node in launcher["available_node_types"].values():
        disk = node["node_config"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"]
        assert disk >= 200  # the venv alone is ~20 GB; GPU nodes also hold the model cache
    assert all(re.match(r"(g6e|g6|p4d|p5|p5e|p5en|p6)\.", t["node_config"]["InstanceType"]) for t in gpu_nodes.values())
    for command in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]:
        assert "~/qeval-venv/bin/ray " in command  # the pinned Ray, not whatever the AMI has

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert ".venv" in env["excludes"] and env["pip"] == "requirements/gpu.txt"
    assert (REPO / env["pip"]).is_file()


def test_job_commands_in_the_cluster_files_parse():
    for text in ((CLUSTER / "cluster.yaml").read_text(), (CLUSTER / "runtime_env.yaml").read_text()):
        for line in text.splitlines():
            if "python jobs/score.py" in line:
                args = shlex.split(line.split("python jobs/score.py", 1)[1].replace("...", "x"))
                score_parser().parse_args(args)


# --- the image recipe --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of cluster/Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            instruction, _, args = pending.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
            pending = ""
    return out


def test_dockerfile_is_pinned_and_installs_only_the_gpu_set():
    steps = dockerfile()
    base = [args for instruction, args in steps if instruction == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d(@sha256:[0-9a-f]{64})?",
                                            base[0]), base
    torch_cuda = re.search(r"CUDA (\d+)\.\d+", (REPO / "requirements" / "gpu.txt").read_text()).group(1)
    assert base[0].split(":")[1].startswith(torch_cuda + ".")  # the base's CUDA is torch's
    copies = {}
    for instruction, args in steps:
        if instruction == "COPY":
            *sources, target = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
                copies[source] = target
        if instruction == "RUN":
            for command in re.split(r"&&|;", args):
                if "pip install" in command:
                    assert "--no-deps" in command, command  # nothing resolved at build time
                    assert "-r /tmp/requirements-gpu.txt" in command or command.strip().endswith(" /app"), command
    assert copies["requirements/gpu.txt"] == "/tmp/requirements-gpu.txt"
    assert {"pyproject.toml", "qeval_ray", "jobs"} <= set(copies)
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")


@pytest.mark.slow
def test_the_package_installs_from_the_image_files_into_a_clean_venv(tmp_path):
    """What the Dockerfile copies to /app installs with pip into a fresh virtual environment, and the
    job imports from there (its third-party packages taken from this environment)."""
    app = tmp_path / "app"
    app.mkdir()
    for instruction, args in dockerfile():
        if instruction == "COPY" and args.split()[-1].startswith("/app"):
            *sources, target = args.split()
            for source in sources:  # Docker's rule: into a directory target (/.../), else as the target
                dest = app / (source if target.endswith("/") else target.removeprefix("/app/"))
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, dest, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    dest.write_bytes((REPO / source).read_bytes())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_FIND_LINKS")}
    env["PIP_CONFIG_FILE"] = os.devnull
    # The build backend from this environment (--no-build-isolation, as in the image), no index.
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "setuptools").is_dir())
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", str(app)], env={**env, "PYTHONPATH": site},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Third-party packages from this environment, appended after the venv's own (a plain path in a
    # .pth file: this environment's editable install of the project is not picked up).
    venv_site = next(venv.glob("lib/python*/site-packages"))
    (venv_site / "zz-deps.pth").write_text(site + "\n")
    code = ("import qeval_ray, qeval_ray.models, qeval_ray.pipeline, qeval_ray.cli; print(qeval_ray.__file__)")
    proc = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(str(venv_site)), proc.stdout
    proc = subprocess.run([str(python), str(app / "jobs" / "score.py"), "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("qeval-ray "), proc.stderr[-2000:]
