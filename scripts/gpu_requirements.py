#!/usr/bin/env python3
"""requirements/gpu.txt: check that its pins resolve for the image, or rewrite its resolved part.

    python scripts/gpu_requirements.py check    # make check-gpu-requirements
    python scripts/gpu_requirements.py lock     # after changing a pin in its "chosen" part

Both ask the package index (pip's own resolver, ``pip install --dry-run --report``, metadata only:
nothing is downloaded but the packages' METADATA) for the image's interpreter and platform: Python
3.12 on x86_64 Linux with glibc 2.39 (Ubuntu 24.04, cluster/Dockerfile). They need the index, so the
test suite (offline) does not run them; tests/test_cluster_configs.py checks what can be checked
offline (the shared pins equal requirements/cpu.txt's, every line pinned).

``check`` passes when the whole file resolves and the resolution installs exactly the pinned set
(nothing missing, nothing else); ``lock`` resolves the "chosen" part and writes every other package
pip selects below it, pinned.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU = REPO / "requirements" / "gpu.txt"
PYTHON = "3.12"
GLIBC_MINOR = 39  # Ubuntu 24.04
RESOLVED = "# --- resolved: everything else pip selects for the chosen pins"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        match = _PIN.match(line.strip())
        if match:
            out[normalise(match.group(1))] = match.group(3)
    return out


def resolve(requirements: list[str]) -> dict[str, str]:
    """pip's resolution of ``requirements`` for the image: {name: version}."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(requirements) + "\n")
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--disable-pip-version-check", "--only-binary=:all:", "--python-version", PYTHON,
                   "--target", str(Path(tmp) / "target"), "--report", str(report), "-r", str(reqs)]
        for platform in platforms:
            command += ["--platform", platform]
        # This machine's pip configuration may point at local wheel folders: the index alone decides.
        env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
        env["PIP_CONFIG_FILE"] = os.devnull
        subprocess.run(command, check=True, env=env)
        installed = json.loads(report.read_text())["install"]
    return {normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in installed}


def chosen_part(text: str) -> list[str]:
    return text.split(RESOLVED)[0].splitlines()


def check() -> int:
    text = GPU.read_text()
    pinned = pins(text.splitlines())
    got = resolve([line for line in text.splitlines() if _PIN.match(line.strip())])
    missing = {n: v for n, v in got.items() if n not in pinned}
    differ = {n: (pinned[n], v) for n, v in got.items() if n in pinned and pinned[n] != v}
    unused = sorted(set(pinned) - set(got))
    for name, version in sorted(missing.items()):
        print(f"not pinned: {name}=={version}")
    for name, (want, have) in sorted(differ.items()):
        print(f"resolved differently: {name} pinned {want}, resolved {have}")
    for name in unused:
        print(f"pinned but not needed: {name}")
    if missing or differ or unused:
        return 1
    print(f"{GPU.relative_to(REPO)}: {len(got)} packages resolve for Python {PYTHON}, x86_64, glibc 2.{GLIBC_MINOR}")
    return 0


def lock() -> int:
    text = GPU.read_text()
    head = chosen_part(text)
    chosen = pins(head)
    got = resolve([line for line in head if _PIN.match(line.strip())])
    rest = [f"{name}=={version}" for name, version in sorted(got.items()) if name not in chosen]
    GPU.write_text("\n".join(head).rstrip() + "\n\n" + RESOLVED + "\n" + "\n".join(rest) + "\n")
    print(f"{GPU.relative_to(REPO)}: {len(chosen)} chosen, {len(rest)} resolved")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("check", "lock"):
        sys.exit(__doc__)
    sys.exit(check() if sys.argv[1] == "check" else lock())
