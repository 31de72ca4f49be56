"""The throughput benchmark's harness: every mode runs, reports rates, and scores the same items the
same way, so its ratios compare equal work."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_every_mode_runs_and_scores_the_same_items(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--arch", "tiny", "--items", "6",
                           "--batch-size", "3", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"1", "2", "3", "4", "5"}
    for mode in report["modes"].values():
        assert "skipped" not in mode and "failed" not in mode, mode
        for key in ("items_per_s", "prompts_per_s", "prompt_tokens_per_s", "prefill_tflops_per_s", "seconds"):
            assert mode[key] > 0, (mode["name"], key)
        assert len(mode["scores"]) == 6
    assert report["modes"]["3"]["aspects"] == ["quality", "alignment"]
    assert report["modes"]["4"]["rate_method"]  # how the job's rate was measured
    assert len(report["ratios"]) == 4 and all(v > 0 for v in report["ratios"].values())
    assert report["parity"]["compared_modes"] == [1, 2, 3, 4, 5] or report["parity"]["compared_modes"] == ["1", "2", "3", "4", "5"]
    assert report["parity"]["max_abs_diff"] < 1e-4  # equal work: the same scores in every mode
    for key in ("device", "settings", "date", "arch"):
        assert report[key]
    assert report["settings"]["media"] == "1024x1024 images" and report["settings"]["mean_prompt_tokens"] > 1369
    assert "2/1 vllm batched vs reference loop" in proc.stdout


def test_chosen_modes_run_alone_and_keep_a_json_after_each(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--items", "2", "--batch-size", "2",
                           "--modes", "5,1", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # In the order asked for (a device run puts the modes that matter most first).
    assert 0 <= proc.stderr.index("hf: modes [5] done") < proc.stderr.index("reference: modes [1] done")
    report = json.loads(out.read_text())
    assert list(report["modes"]) == ["5", "1"] and report["modes"]["5"]["prompts_per_s"] > 0
    assert list(report["ratios"]) == ["5/1 HF batched vs reference loop (prompts/s)"]

    bad = subprocess.run([sys.executable, "benchmarks/throughput.py", "--modes", "1,7"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown mode [7]" in bad.stderr


def test_the_7b_architecture_is_the_published_one(tmp_path):
    import torch
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    from qeval_ray.testing.tiny_model import build

    config = AutoConfig.from_pretrained(build(tmp_path / "arch", arch="qwen2-vl-7b"))
    with torch.device("meta"):  # no memory: only the shapes
        model = Qwen2VLForConditionalGeneration._from_config(config)
    lm = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    vision = sum(p.numel() for n, p in model.named_parameters() if "visual" in n)
    assert round(lm / 1e9, 2) == 7.62 and round(vision / 1e9, 2) == 0.68
    assert config.text_config.num_key_value_heads == 4 and config.vision_config.depth == 32
