"""Bring what the throughput benchmark needs to a lent GPU machine that cannot download anything.

The GPU machines lent for measurements have Python 3.12, torch 2.11, transformers 5.17, pyarrow and
scipy, but no qwen-vl-utils, PyAV, decord, requests or vLLM, no network, and take at most 64 MiB of files per
call. This script packs exact wheels (``benchmarks/device-wheels.txt``) into carry-sized parts here
and installs them there once every part has arrived:

    here:   python benchmarks/device.py bundle [--vllm]        # -> build/device/part-01, part-02, ...
    there:  python benchmarks/device.py install                # after each carried part; says what is missing
            PYTHONPATH=build/device/site python benchmarks/throughput.py --arch qwen2-vl-7b --modes 3,1,2

Each part is carried in its own call (``carry=["build/device/part-NN"]``); the machine keeps the
earlier ones while it is held. Wheels larger than a part are split, joined there and checked against
their sha256. Without ``--vllm`` the bundle is one part (modes 1 and 5); with it, vLLM 0.25.0 (the
release that pins the machines' torch 2.11) and the part of its requirements that offline scoring
imports, about 6 parts (modes 2 and 3). Everything installs into ``build/device/site`` with
``--no-deps``, so the machine's own packages are left as they are. This file uses only the
standard library: it runs on the machine before anything is installed there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "benchmarks" / "device-wheels.txt"
DEFAULT_DIR = REPO / "build" / "device"
CARRY_LIMIT = 64 * 2**20
DEFAULT_PART_MIB = 62  # the carry limit counts the working tree too (~0.3 MiB) and the manifest
# The machines' interpreter (see the README's Performance section).
TARGET = {"python_version": "3.12", "abis": ("cp312", "abi3", "none"),
          # glibc up to 2.35 (Ubuntu 22.04); pip does not widen a --platform to older manylinux tags.
          "platforms": tuple(f"manylinux_2_{v}_x86_64" for v in range(35, 4, -1))
          + ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any")}
# What must import once installed, per group: the check that the bundle is whole.
CHECKS = {"benchmark": ("qwen_vl_utils", "av", "decord", "requests"),
          "vllm": ("vllm.entrypoints.llm", "vllm.v1.engine.async_llm", "vllm.v1.engine.core",
                   "vllm.v1.worker.gpu_model_runner",
                   "vllm.model_executor.models.qwen2_vl", "vllm.multimodal.hasher")}


class BundleError(RuntimeError):
    pass


def read_lock(path: Path = LOCK) -> dict[str, list[str]]:
    """``[group]`` headers, then one exact ``name==version`` per line."""
    groups: dict[str, list[str]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1], [])
        elif current is None or "==" not in line:
            raise BundleError(f"{path}: expected a [group] header, then name==version lines; got {raw!r}")
        else:
            current.append(line)
    return groups


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


# --- here: download and pack ------------------------------------------------------------------


def download(requirements: list[str], dest: Path) -> list[Path]:
    """The machines' wheels (cp312, manylinux x86_64), exactly as pinned, without dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
           "--python-version", TARGET["python_version"], "--implementation", "cp"]
    cmd += [a for abi in TARGET["abis"] for a in ("--abi", abi)]
    cmd += [a for p in TARGET["platforms"] for a in ("--platform", p)]
    # Local wheel folders configured for this machine's own installs would shadow the registry.
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"} | {"PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run(cmd + requirements, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BundleError(f"pip download failed:\n{proc.stderr[-3000:]}")
    wanted = {_dist_key(r.split("==")[0]) for r in requirements}
    return sorted(p for p in dest.glob("*.whl") if _dist_key(p.name.split("-")[0]) in wanted)


def _dist_key(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def pack(wheels: list[Path], out: Path, part_bytes: int, checks: list[str]) -> dict:
    """Lay the wheels out as numbered part folders of at most ``part_bytes`` each.

    Whole wheels are packed first-fit, largest first; a wheel larger than a part is cut into pieces
    that fill parts of their own. The manifest (every wheel's pieces and sha256) goes into each part,
    so whichever part arrives first tells the machine what to wait for.
    """
    if part_bytes >= CARRY_LIMIT:
        raise BundleError(f"a part must stay under the {CARRY_LIMIT // 2**20} MiB carry limit")
    for old in out.glob("part-*"):
        shutil.rmtree(old)
    parts: list[list[tuple[Path, int, int, str]]] = []  # (source, offset, length, file name in the part)
    room: list[int] = []
    manifest = {"wheels": {}, "checks": checks}
    for wheel in sorted(wheels, key=lambda p: p.stat().st_size, reverse=True):
        size = wheel.stat().st_size
        entry = manifest["wheels"][wheel.name] = {"sha256": _sha256(wheel), "size": size, "pieces": []}
        if size <= part_bytes:
            k = next((i for i, free in enumerate(room) if free >= size), None)
            if k is None:
                parts.append([])
                room.append(part_bytes)
                k = len(parts) - 1
            parts[k].append((wheel, 0, size, wheel.name))
            room[k] -= size
            entry["pieces"].append({"file": wheel.name, "part": k + 1})
            continue
        for n, offset in enumerate(range(0, size, part_bytes)):
            length = min(part_bytes, size - offset)
            piece = f"{wheel.name}.piece{n:03d}"
            parts.append([(wheel, offset, length, piece)])
            room.append(part_bytes - length)
            entry["pieces"].append({"file": piece, "part": len(parts)})
    manifest["parts"] = len(parts)
    for k, files in enumerate(parts, start=1):
        folder = out / f"part-{k:02d}"
        folder.mkdir(parents=True)
        for source, offset, length, name in files:
            with open(source, "rb") as src, open(folder / name, "wb") as dst:
                src.seek(offset)
                dst.write(src.read(length))
        (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
        total = sum(f.stat().st_size for f in folder.iterdir())
        if total >= CARRY_LIMIT:
            raise BundleError(f"{folder} is {total} bytes, over the carry limit")
    return manifest


def bundle(args) -> int:
    groups = read_lock()
    names = ["benchmark"] + (["vllm"] if args.vllm else [])
    requirements = [r for g in names for r in groups[g]]
    wheels = download(requirements, Path(args.dir) / "downloads")
    checks = [m for g in names for m in CHECKS.get(g, ())]
    manifest = pack(wheels, Path(args.dir), int(args.part_mib * 2**20), checks)
    total = sum(w["size"] for w in manifest["wheels"].values())
    rel = os.path.relpath(args.dir, REPO)
    count = manifest["parts"]
    print(f"{len(manifest['wheels'])} wheels, {total / 2**20:.0f} MiB, in {count} part{'s' * (count != 1)} under {rel}.")
    print("Carry each part in its own call, then install; e.g. for part 1:")
    print(f'  carry=["{rel}/part-01"]  command="python3 benchmarks/device.py install"')
    return 0


# --- there: gather, join, check, install ------------------------------------------------------


def gather(folder: Path) -> tuple[dict, list[int]]:
    """The manifest, and the numbers of the parts not here yet."""
    manifests = sorted(folder.glob("part-*/MANIFEST.json"))
    if not manifests:
        raise BundleError(f"no part-*/MANIFEST.json under {folder}: carry a part first")
    manifest = json.loads(manifests[0].read_text())
    for other in manifests[1:]:
        if json.loads(other.read_text())["wheels"] != manifest["wheels"]:
            raise BundleError(f"{other.parent.name} is from a different bundle than {manifests[0].parent.name}: "
                              "carry the parts of one bundle")
    missing = [k for k in range(1, manifest["parts"] + 1) if not (folder / f"part-{k:02d}" / "MANIFEST.json").exists()]
    return manifest, missing


def join(folder: Path, manifest: dict) -> list[Path]:
    """Whole wheels from their pieces, each checked against its sha256."""
    wheels_dir = folder / "wheels"
    wheels_dir.mkdir(exist_ok=True)
    joined = []
    for name, entry in manifest["wheels"].items():
        target = wheels_dir / name
        with open(target, "wb") as dst:
            for piece in entry["pieces"]:
                src = folder / f"part-{piece['part']:02d}" / piece["file"]
                if not src.exists():
                    raise BundleError(f"{src.relative_to(folder)} is missing: carry part {piece['part']} again")
                with open(src, "rb") as f:
                    for block in iter(lambda: f.read(2**20), b""):
                        dst.write(block)
        if _sha256(target) != entry["sha256"]:
            target.unlink()
            raise BundleError(f"{name} does not match its sha256 (a piece was damaged on the way): "
                              f"carry parts {sorted({p['part'] for p in entry['pieces']})} again")
        joined.append(target)
    return joined


def install_wheels(wheels: list[Path], site: Path) -> None:
    """pip (the machines have it), offline, into a folder of its own."""
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade",
                           "--target", str(site), *map(str, wheels)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BundleError(f"pip install failed:\n{proc.stderr[-3000:]}")


def check_imports(site: Path, modules: list[str]) -> list[str]:
    """The modules that do not import with the site on the path, each with its error."""
    failures = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    for module in modules:
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            failures.append(f"{module}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return failures


def install(args) -> int:
    folder = Path(args.dir)
    manifest, missing = gather(folder)
    have = manifest["parts"] - len(missing)
    if missing:
        print(f"{have} of {manifest['parts']} parts here; still to carry: "
              + ", ".join(f"part-{k:02d}" for k in missing))
        return 3
    wheels = join(folder, manifest)
    site = folder / "site"
    install_wheels(wheels, site)
    failures = check_imports(site, manifest["checks"])
    if failures:
        print("installed, but these do not import:\n  " + "\n  ".join(failures))
        return 1
    print(f"{len(wheels)} wheels installed into {site}; {', '.join(manifest['checks'])} import.")
    print(f"run with PYTHONPATH={site}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="here: download the pinned wheels and pack them into carry-sized parts")
    b.add_argument("--vllm", action="store_true", help="also vLLM and what offline scoring needs of it")
    b.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB)
    i = sub.add_parser("install", help="there: install once every part has been carried")
    for p in (b, i):
        p.add_argument("--dir", default=str(DEFAULT_DIR))
    args = parser.parse_args(argv)
    try:
        return bundle(args) if args.command == "bundle" else install(args)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
