"""ctest infgen_kernel_table (no GPU): libinfgen_kernels exports exactly its C API, and its kernel
table holds the cubins the AOT step compiled, with the runtime's tiles, within sm_90's limits.

    python native/tests/check_library.py --lib build/libinfgen_kernels.so \
        --manifest build/native_gen/manifest.json --header native/include/infgen_kernels.h

Checks, each against a source other than the table itself:
- exported dynamic symbols (nm -D) == the INFGEN_API functions declared in the header;
- the table read through the library's own API (ctypes) == manifest.json written by native/aot.py,
  and each embedded cubin's sha256 == the compiled one's;
- attention tiles and warps == infgen.kernels.attention.pick_config (what the Python runtime launches);
- each cubin, read by cuobjdump: an sm_90a ELF whose kernel is the table's symbol, <= 255
  registers, static + dynamic shared memory <= 232,448 B, and no stack (spills) except for the
  variants native/aot.py lists in KNOWN_SPILLS.
Exit 0 when all hold, 1 with each failure listed.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

SHARED_LIMIT = 232_448
MAX_REGS = 255


class KernelInfo(ctypes.Structure):
    """infgen_kernel_info of native/include/infgen_kernels.h, field for field."""
    _fields_ = [("name", ctypes.c_char_p), ("symbol", ctypes.c_char_p), ("kind", ctypes.c_int),
                ("dtype", ctypes.c_int), ("dim", ctypes.c_int), ("tile_m", ctypes.c_int), ("tile_n", ctypes.c_int),
                ("num_warps", ctypes.c_int), ("num_stages", ctypes.c_int), ("flags", ctypes.c_int),
                ("num_freqs", ctypes.c_int), ("shared", ctypes.c_int), ("num_params", ctypes.c_int),
                ("num_args", ctypes.c_int), ("arch", ctypes.c_int), ("args", ctypes.c_char_p),
                ("cubin", ctypes.POINTER(ctypes.c_ubyte)), ("cubin_size", ctypes.c_size_t)]


def header_fields(header: str) -> list[str]:
    """Field names of infgen_kernel_info as declared in the header (to keep KernelInfo honest)."""
    body = re.search(r"typedef struct \{(.*?)\} infgen_kernel_info;", header, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    return re.findall(r"(\w+)\s*;", body)


def read_table(lib) -> list[dict]:
    lib.infgen_kernel_get.restype = ctypes.POINTER(KernelInfo)
    rows = []
    for i in range(lib.infgen_kernel_count()):
        k = lib.infgen_kernel_get(i).contents
        row = {f: getattr(k, f) for f, _ in KernelInfo._fields_ if f not in ("cubin", "cubin_size")}
        row = {f: v.decode() if isinstance(v, bytes) else v for f, v in row.items()}
        row["cubin"] = ctypes.string_at(k.cubin, k.cubin_size)
        rows.append(row)
    return rows


def inspect_cubin(cubin: bytes) -> dict:
    """infgen.kernels.toolchain.resource_usage of a cubin (reg, stack, shared, local), plus its
    functions (cuobjdump's resource listing) and whether it is an sm_90a ELF (--list-elf)."""
    from infgen.kernels import toolchain
    res = toolchain.resource_usage(cubin)
    res["functions"] = re.findall(r"Function (\S+?):", toolchain.cuobjdump(cubin, "--dump-resource-usage"))
    res["sm_90a"] = ".sm_90a." in toolchain.cuobjdump(cubin, "--list-elf")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True, type=Path)
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--header", required=True, type=Path)
    args = ap.parse_args(argv)
    errors: list[str] = []
    header = args.header.read_text()
    manifest = json.loads(args.manifest.read_text())

    # 1. exported symbols == the header's API
    declared = set(re.findall(r"INFGEN_API\s+[\w\s\*]*?\b(infgen_\w+)\s*\(", header))
    nm = subprocess.run(["nm", "-D", "--defined-only", str(args.lib)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in nm.stdout.splitlines() if line.split()[1:2] in (["T"], ["D"], ["R"], ["B"])}
    if exported != declared:
        errors.append(f"exported symbols {sorted(exported)} != header API {sorted(declared)}")
    fields = [f for f, _ in KernelInfo._fields_]
    if header_fields(header) != fields:
        errors.append(f"infgen_kernel_info fields in the header {header_fields(header)} != this test's {fields}")
        return report(errors)

    # 2. the library's table == the manifest
    lib = ctypes.CDLL(str(args.lib))
    table = read_table(lib)
    lib.infgen_build_info.restype = ctypes.c_char_p
    if lib.infgen_build_info().decode() != manifest["build_info"]:
        errors.append(f"build info {lib.infgen_build_info()!r} != manifest {manifest['build_info']!r}")
    kinds, dtypes = {"attention": 0, "inpe": 1, "inpe_mlp": 2}, {"bf16": 0, "fp16": 1}
    if [r["name"] for r in table] != [m["name"] for m in manifest["kernels"]]:
        errors.append(f"table names {[r['name'] for r in table]} != manifest {[m['name'] for m in manifest['kernels']]}")
    for row, m in zip(table, manifest["kernels"]):
        want = {"symbol": m["symbol"], "kind": kinds[m["kind"]], "dtype": dtypes[m["dtype"]], "dim": m["dim"],
                "tile_m": m["tile"][0], "tile_n": m["tile"][1], "num_warps": m["num_warps"],
                "num_stages": m["num_stages"], "flags": m["flags"], "num_freqs": m["num_freqs"],
                "shared": m["shared"], "num_params": m["num_params"], "num_args": m["num_args"],
                "arch": m["arch"], "args": ",".join(m["args"])}
        for f, v in want.items():
            if row[f] != v:
                errors.append(f"{row['name']}: {f} is {row[f]!r} in the library, {v!r} in the manifest")
        if hashlib.sha256(row["cubin"]).hexdigest() != m["cubin_sha256"]:
            errors.append(f"{row['name']}: embedded cubin differs from the compiled one (sha256)")

    # 3. attention tiles == the runtime's
    import torch
    from infgen.kernels.attention import pick_config
    for row in table:
        if row["kind"] == kinds["attention"]:
            bm, bn, warps, stages = pick_config(row["dim"], torch.device("cuda"))
            if (row["tile_m"], row["tile_n"], row["num_warps"], row["num_stages"]) != (bm, bn, warps, stages):
                errors.append(f"{row['name']}: tile {row['tile_m']}x{row['tile_n']} w{row['num_warps']} "
                              f"s{row['num_stages']} != infgen.kernels.attention.pick_config {bm}x{bn} w{warps} s{stages}")

    # 4. the cubins themselves
    known_spills = {(k, d, tuple(t), f) for k, d, t, f in manifest["known_spills"]}
    for row, m in zip(table, manifest["kernels"]):
        u = inspect_cubin(row["cubin"])
        shared = u["shared"] + row["shared"]
        line = (f"{row['name']:26s} {row['symbol']}  block {32 * row['num_warps']:3d} threads  tile "
                f"{row['tile_m']}x{row['tile_n']}  shared {shared:6d} B  regs {u['reg']}  stack {u['stack']} B")
        print(line)
        if not u["sm_90a"]:
            errors.append(f"{row['name']}: the cubin is not an sm_90a ELF")
        if u["functions"] != [row["symbol"]]:
            errors.append(f"{row['name']}: cubin functions {u['functions']} != table symbol {row['symbol']!r}")
        if u["reg"] > MAX_REGS:
            errors.append(f"{row['name']}: {u['reg']} registers > {MAX_REGS}")
        if shared > SHARED_LIMIT:
            errors.append(f"{row['name']}: {shared} B shared memory > {SHARED_LIMIT}")
        known = (m["kind"], m["dim"], tuple(m["tile"]), m["flags"]) in known_spills
        if u["stack"] and not known:
            errors.append(f"{row['name']}: {u['stack']} B of stack (register spills); the variant must be spill-free")
        if not u["stack"] and known:
            print(f"  {row['name']} no longer spills: remove it from native/aot.py KNOWN_SPILLS")
    return report(errors, len(table))


def report(errors: list[str], n: int = 0) -> int:
    for e in errors:
        print("FAIL", e)
    print(f"{n} kernels checked, {len(errors)} failures")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
