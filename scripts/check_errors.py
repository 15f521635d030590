"""Does a C++ exception raised inside a kernel reach Python as RuntimeError on this machine?

Runs one argument error from torch's own kernels and the same kind of error from pydcr's CPU and
CUDA kernels, each in a process of its own (a crash takes only that process), and prints what
each ended with. Then prints what decides how an exception crosses from pydcr's modules into
libtorch: the compiler the build used, the C++ runtime libraries the process maps, and the
modules' unwind tables and dependencies. When a call crashes and cuda-gdb (or gdb) is found, the
native backtrace of the crash follows.

    python3 scripts/check_errors.py     # from the source folder, after an editable install
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

CALLS = {
    "torch (aten.add, mismatched shapes)": "torch.ops.aten.add.Tensor(torch.zeros(2), torch.zeros(3))",
    "pydcr CPU kernel (resize of int32)": "ops.resize(torch.zeros(1, 3, 8, 8, dtype=torch.int32), 4)",
    "pydcr CUDA kernel (resize of int32)": "ops.resize(torch.zeros(1, 3, 8, 8, dtype=torch.int32, device='cuda'), 4)",
}
PRELUDE = "import torch\nfrom pydcr import ops\n"


def run_call(code: str) -> tuple[str, int]:
    catch = "except RuntimeError as e:\n    print('RuntimeError:', str(e).splitlines()[0][:160])\n"
    script = PRELUDE + f"try:\n    {code}\n" + catch
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "timed out after 60 s", 124
    out = (proc.stdout + proc.stderr).strip().splitlines()
    return (out[-1] if out else ""), proc.returncode


def backtrace(code: str) -> str:
    gdb = shutil.which("cuda-gdb") or shutil.which("gdb")
    if gdb is None:
        return "  (no cuda-gdb or gdb on PATH)"
    cmd = [gdb, "-q", "-batch", "-ex", "run", "-ex", "bt 30", "--args", sys.executable, "-c", PRELUDE + code]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return f"  ({Path(gdb).name} timed out after 120 s)"
    lines = (proc.stdout + proc.stderr).splitlines()
    frames = [line for line in lines if re.match(r"#\d+ |Thread .* received signal", line)]
    return "\n".join("  " + line[:240] for line in frames) or "  (no frames)"


def toolchain() -> None:
    import torch

    import pydcr
    from pydcr import _extension

    print("torch", torch.__version__, "| pydcr built with compiler", pydcr.build_info()["compiler"])
    cache = next(Path("build").glob("*/CMakeCache.txt"), None)
    cxx = None
    if cache is not None:
        match = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.+)$", cache.read_text(), re.M)
        cxx = match.group(1) if match else None
    if cxx:
        print("CMAKE_CXX_COMPILER", cxx)
        for flag in ("-print-file-name=libstdc++.so", "-print-file-name=libgcc_s.so.1"):
            print(" ", flag, subprocess.run([cxx, flag], capture_output=True, text=True).stdout.strip())
        configured = subprocess.run([cxx, "-v"], capture_output=True, text=True).stderr
        print(" ", next((line for line in configured.splitlines() if line.startswith("Configured with")), "?"))
    maps = Path("/proc/self/maps").read_text().splitlines()
    runtime = sorted({line.split()[-1] for line in maps if re.search(r"lib(stdc\+\+|gcc_s)\.so", line)})
    print("C++ runtime mapped by this process:", ", ".join(runtime))
    readelf = shutil.which("readelf")
    for module in (_extension._C, _extension._C_cuda):
        if module is None:
            continue
        print(module.__file__)
        if readelf:
            headers = subprocess.run([readelf, "-lWd", module.__file__], capture_output=True, text=True).stdout
            for line in headers.splitlines():
                if re.search(r"GNU_EH_FRAME|NEEDED|RUNPATH|RPATH", line):
                    print("  " + " ".join(line.split()))


def main() -> int:
    import torch

    crashed = []
    for name, code in CALLS.items():
        if "cuda" in code and not torch.cuda.is_available():
            continue
        last, rc = run_call(code)
        print(f"{name}: {'exit ' + str(rc) if rc >= 0 else 'signal ' + str(-rc)}: {last}")
        if rc != 0:
            crashed.append(code)
    print()
    toolchain()
    for code in crashed[:1]:
        print(f"\nnative backtrace of: {code}")
        print(backtrace(code))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
