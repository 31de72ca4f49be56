"""benchmarks/device.py: wheels packed into carry-sized parts here install there only when every
part has arrived, whole and from one bundle. Real wheels, real pip (offline, --no-index)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("device", REPO / "benchmarks" / "device.py")
device = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device)


def make_wheel(folder, name: str, payload: bytes, extra: bool = False):
    """A real pure-Python wheel holding ``payload`` (stored uncompressed, so its size is known)."""
    files = {f"{name}/__init__.py": b"import pathlib\nDATA = (pathlib.Path(__file__).parent / 'payload.bin').read_bytes()\n",
             f"{name}/payload.bin": payload}
    if extra:  # a file under .data/purelib, which an installer moves to the site's top
        files[f"{name}-1.0.data/purelib/{name}_extra.py"] = b"VALUE = 42\n"
    info = f"{name}-1.0.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for p, d in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for p, d in files.items():
            z.writestr(p, d)
    return path


@pytest.fixture
def bundle(tmp_path):
    """Two wheels, one three times a part's size, packed into 4 KiB parts."""
    wheels_dir = tmp_path / "downloads"
    wheels_dir.mkdir()
    big = os.urandom(10_000)
    wheels = [make_wheel(wheels_dir, "bigpkg", big, extra=True), make_wheel(wheels_dir, "smallpkg", b"small")]
    out = tmp_path / "here"
    manifest = device.pack(wheels, out, 4096, ["bigpkg", "bigpkg_extra", "smallpkg"])
    return out, manifest, big


def run_install(folder):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "device.py"), "install", "--dir", str(folder)],
                          capture_output=True, text=True, timeout=300)


def test_parts_install_once_all_have_arrived_in_any_order(bundle, tmp_path):
    out, manifest, big = bundle
    parts = sorted(out.glob("part-*"))
    assert manifest["parts"] == len(parts) >= 4  # the big wheel alone needs 3 parts
    assert len(manifest["wheels"]["bigpkg-1.0-py3-none-any.whl"]["pieces"]) == 3
    for part in parts:  # each part fits its budget (plus the manifest copy)
        assert sum(f.stat().st_size for f in part.iterdir() if f.name != "MANIFEST.json") <= 4096

    there = tmp_path / "there"
    there.mkdir()
    for k, part in enumerate(reversed(parts), start=1):
        shutil.copytree(part, there / part.name)
        proc = run_install(there)
        if k < len(parts):
            assert proc.returncode == 3, proc.stdout + proc.stderr
            assert f"{k} of {len(parts)} parts here" in proc.stdout
            assert "part-01" in proc.stdout  # the first part is carried last here, so still missing
            assert not (there / "site").exists()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 wheels installed" in proc.stdout

    check = subprocess.run([sys.executable, "-c", "import bigpkg, bigpkg_extra, smallpkg, sys; "
                            "sys.stdout.buffer.write(bigpkg.DATA + bytes([bigpkg_extra.VALUE]))"],
                           env=dict(os.environ, PYTHONPATH=str(there / "site")), capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout == big + bytes([42])  # the pieces were joined in order, byte for byte


def test_a_damaged_piece_names_the_parts_to_carry_again(bundle, tmp_path):
    out, manifest, _ = bundle
    there = tmp_path / "there"
    shutil.copytree(out, there)
    piece = manifest["wheels"]["bigpkg-1.0-py3-none-any.whl"]["pieces"][1]
    damaged = there / f"part-{piece['part']:02d}" / piece["file"]
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    proc = run_install(there)
    assert proc.returncode == 2
    assert "bigpkg-1.0-py3-none-any.whl does not match its sha256" in proc.stderr
    assert "carry parts [1, 2, 3] again" in proc.stderr
    assert not (there / "site").exists()


def test_parts_of_two_bundles_are_refused(bundle, tmp_path):
    out, _, _ = bundle
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    device.pack([make_wheel(other_dir, "otherpkg", b"x")], other_dir / "bundle", 4096, ["otherpkg"])
    there = tmp_path / "there"
    shutil.copytree(out / "part-02", there / "part-02")
    shutil.copytree(other_dir / "bundle" / "part-01", there / "part-01")
    proc = run_install(there)
    assert proc.returncode == 2 and "from a different bundle" in proc.stderr


def test_a_failing_import_is_reported(tmp_path):
    wheels_dir = tmp_path / "downloads"
    wheels_dir.mkdir()
    device.pack([make_wheel(wheels_dir, "okpkg", b"x")], tmp_path / "there", 4096, ["okpkg", "not_in_the_bundle"])
    proc = run_install(tmp_path / "there")
    assert proc.returncode == 1
    assert "not_in_the_bundle: ModuleNotFoundError" in proc.stdout


def test_a_part_may_not_reach_the_carry_limit(tmp_path):
    with pytest.raises(device.BundleError, match="carry limit"):
        device.pack([], tmp_path, device.CARRY_LIMIT, [])


def test_the_lock_file_pins_each_wheel_once():
    groups = device.read_lock()
    assert set(groups) == {"benchmark", "vllm"} == set(device.CHECKS)
    names = [line.split("==")[0].lower().replace("_", "-") for lines in groups.values() for line in lines]
    assert len(names) == len(set(names)), "a wheel listed twice would stop the install there"
    assert "vllm==0.25.0" in groups["vllm"]  # the release that pins the machines' torch 2.11.0
    assert {"qwen-vl-utils", "av", "decord2"} <= set(names)
