"""Smoke tests of the benchmarks: each one runs on the CPU at its smallest settings, exits 0 and writes
the JSON rows it claims. The figures are not checked (they are noise at these sizes); a benchmark that
crashes on one of its cases (one dtype's rows, one contender) fails here instead of in a GPU run.

Each runs as `python -m bench.NAME` in a fresh process, as the README runs them: bench.trunk sets the
denormal flush process-wide (which would leak into the tests after it), and bench.allocator starts
its workers with `-m`. bench/ is not in the wheel, so it is put on the path through a link in a temporary folder: the
source folder itself on the path would shadow an installed (non-editable) pydcr with its unbuilt
sources. One intra-op thread per process: a loaded CI machine's threads spin against each other
and the smoke runs take several times as long.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

TRUNK_TINY = ["--batch", "2", "--width", "0.0625"]


@pytest.fixture(scope="module")
def bench_path(tmp_path_factory) -> Path:
    """A folder holding only a link to bench/: the path entry and working directory of the runs."""
    root = tmp_path_factory.mktemp("bench_path")
    (root / "bench").symlink_to(BENCH, target_is_directory=True)
    return root


def run_bench(name: str, args: list, bench_path: Path, out: Path | None = None) -> tuple[dict | None, str]:
    """Run bench.NAME with args (and --out), return its JSON (None without --out) and stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(bench_path), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", f"bench.{name}", *map(str, args)] + (["--out", str(out)] if out else [])
    result = subprocess.run(argv, check=False, cwd=bench_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (f"bench.{name} exited {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    if out is None:
        return None, result.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"].startswith(name.split("_")[0]) and data["machine"] and data["rows"]
    return data, result.stdout


def check_columns(rows: list[dict], required: set[str]) -> None:
    for row in rows:
        assert required <= row.keys(), f"missing {required - row.keys()} in {row}"


def test_resize(bench_path, tmp_path):
    data, _ = run_bench("resize", ["--quick", "--batch", "2"], bench_path, tmp_path / "resize.json")
    rows = data["rows"]
    check_columns(rows, {"input", "size", "dtype", "antialias", "pass", "ours_ms", "ref_ms", "lowrank_ms", "speedup",
                         "vs_lowrank"})
    # 2 cases x (uint8: 2 antialias x fwd; float32 and bfloat16: 2 antialias x fwd, fwd+bwd)
    assert len(rows) == 20
    assert {r["dtype"] for r in rows} == {"uint8", "float32", "bfloat16"}
    assert {r["input"] for r in rows} == {"2x3x112x96", "2x3x12x12"}


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_the_allocator_setting_is_applied_and_recorded(bench_path, tmp_path):
    """Timings depend on whether freed memory is kept (pydcr.allocator): the report says which ran."""
    args = ["--quick", "--batch", "2"]
    retained, out = run_bench("resize", args, bench_path, tmp_path / "retained.json")
    assert retained["machine"]["malloc"] == "retains freed memory" and "malloc retains freed memory" in out
    default, out = run_bench("resize", [*args, "--malloc", "default"], bench_path, tmp_path / "default.json")
    assert default["machine"]["malloc"] == "default" and "malloc default" in out


def test_degrade(bench_path, tmp_path):
    data, _ = run_bench("degrade", ["--quick", "--batch", "2"], bench_path, tmp_path / "degrade.json")
    rows = data["rows"]
    check_columns(rows, {"N", "k", "dtype", "antialias", "ours_ms", "two_call_ms", "lowrank_ms", "vs_two_call",
                         "vs_lowrank"})
    cases = {(r["dtype"], r["antialias"]) for r in rows}
    # --quick leaves out uint8 without antialiasing; bfloat16 without it is the row OpenCV cannot take
    assert cases == {("uint8", True), ("float32", True), ("float32", False), ("bfloat16", True), ("bfloat16", False)}
    for r in rows:  # OpenCV: the CPU's non-antialiased uint8 and float32 rows only, else left out (printed "-")
        with_opencv = not r["antialias"] and r["dtype"] in ("uint8", "float32")
        assert ("opencv_ms" in r) == ("vs_opencv" in r) == with_opencv, r
    assert data["copy_bandwidth_gbs"] is None


def test_center(bench_path, tmp_path):
    data, _ = run_bench("center", ["--quick", "--batch", "8"], bench_path, tmp_path / "center.json")
    (row,) = data["rows"]
    check_columns([row], {"B", "C", "D", "dtype", "ours_ms", "all_ms", "present_ms", "distmat_ms", "vs_all",
                          "vs_present", "vs_distmat", "ours_MiB", "present_MiB", "distmat_MiB"})
    assert row["B"] == 8 and row["dtype"] == "float32"


def test_prelu(bench_path, tmp_path):
    args = ["--quick", "--no-compile", "--op-batch", "1", "--stack-batch", "1"]
    data, _ = run_bench("prelu", args, bench_path, tmp_path / "prelu.json")
    rows = data["rows"]
    check_columns(rows, {"kind", "shape", "dtype", "layout", "pass", "ours_ms", "eager_ms", "vs_eager"})
    kinds = [r["kind"] for r in rows]
    # op rows: 2 ops x 2 layouts x 2 passes; call rows: 2 ops x 2 passes; stacks: the first 2 stages
    assert kinds.count("prelu") == kinds.count("prelu_pool") == 4
    assert kinds.count("prelu call") == kinds.count("prelu_pool call") == 2
    assert kinds.count("stack") == 2
    assert all(r["shape"].startswith("1x") for r in rows if r["kind"] in ("prelu", "prelu_pool", "stack"))


def test_trunk(bench_path, tmp_path):
    data, _ = run_bench("trunk", ["--quick", *TRUNK_TINY], bench_path, tmp_path / "trunk.json")
    rows = data["rows"]
    check_columns(rows, {"pass", "model", "batch", "ms", "images_per_s", "speedup_vs_eager", "peak_mib"})
    assert {(r["pass"], r["model"]) for r in rows} == {(p, m) for p in ("inference", "train_step")
                                                       for m in ("ours", "eager")}
    assert data["width"] == 0.0625


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="retain_freed_memory is glibc's malloc setting")
def test_allocator(bench_path, tmp_path):
    data, _ = run_bench("allocator", ["--quick", *TRUNK_TINY], bench_path, tmp_path / "allocator.json")
    rows = data["rows"]
    check_columns(rows, {"pass", "setting", "batch", "ms", "speedup_vs_default", "peak_mib"})
    assert {(r["pass"], r["setting"]) for r in rows} == {(p, s) for p in ("inference", "train_step")
                                                         for s in ("glibc_default", "retain_freed_memory")}


def test_profile_trunk(bench_path):
    # Prints its tables only (its --out is not used): it must get through every contender.
    _, stdout = run_bench("profile_trunk", [*TRUNK_TINY, "--steps", "1", "--rows", "3"], bench_path)
    assert "## ours:" in stdout and "## eager:" in stdout


def test_embed(bench_path, tmp_path):
    args = ["--quick", "--width", "0.0625", "--batch", "8", "--images", "16", "--repeats", "1"]
    data, _ = run_bench("embed", args, bench_path, tmp_path / "embed.json")
    rows = data["rows"]
    check_columns(rows, {"input", "batch", "images", "batches_timed", "images_per_s", "vs_model", "vs_naive",
                         "whole_run_per_s"})
    assert [r["input"] for r in rows] == ["model", "pack", "files", "naive"]
    assert data["width"] == 0.0625


@pytest.mark.data
def test_data(bench_path, tmp_path, lfw_root):
    data, _ = run_bench("data", ["--quick", "--images", "4", "--lfw", lfw_root], bench_path, tmp_path / "data.json")
    rows = data["rows"]
    check_columns(rows, {"task", "contender", "workers", "images", "img_per_s", "vs_naive"})
    contenders = {(r["task"], r["contender"]) for r in rows}
    assert {("decode+align", "naive_cv"), ("decode+align", "ours"), ("mtcnn", "detect"), ("mtcnn", "detect_batch16"),
            ("pack", "ours"), ("read", "packed_loop"), ("read", "packed")} <= contenders
    assert {r["images"] for r in rows} == {4}  # an explicit --images wins over --quick's 400


@pytest.mark.data
def test_mtcnn_landmarks(bench_path, lfw_root):
    # No JSON: it prints the point errors. Every 2000th LFW image: a handful.
    _, stdout = run_bench("mtcnn_landmarks", ["--lfw", lfw_root, "--every", "2000"], bench_path)
    assert "point error: median" in stdout
