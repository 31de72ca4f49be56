"""The cluster configurations parse, and the job commands they carry are ones the job accepts."""

import shlex
from pathlib import Path

import yaml

from qeval_ray.config import score_parser

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def test_rayjob_entrypoint_is_a_valid_command():
    spec = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    argv = shlex.split(spec["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/app/jobs/score.py"]
    args = score_parser().parse_args(argv[2:])  # exits (fails the test) on an unknown option
    assert args.engine == "vllm" and args.output.startswith("s3://")


def test_runtime_env_and_launcher_config_parse():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert ".venv" in env["excludes"] and "vllm" in env["pip"]["packages"]
    launcher = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    assert launcher["head_node_type"] in launcher["available_node_types"]
