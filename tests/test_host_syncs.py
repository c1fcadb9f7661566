"""No code on the device path assigns a Python scalar into a tensor element (#32).

`t[i] = float(x)` on a CUDA tensor is a host-to-device copy: it synchronises every eager call and is
illegal inside `torch.cuda.graph` capture (the triton backend captures its decode). `t[i:j].fill_(x)`
passes the scalar as a kernel argument instead. The CPU cannot observe the sync, so the rule is
checked on the source: every subscript assignment in the kernels and the runtime's device code.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Host-side bookkeeping, not device code: kernels/toolchain.py compiles and reads cubins (its subscript
# stores are Counters); infgen_ref/walk.py's are the meta-device walk's allocation records.
HOST_ONLY = {"toolchain.py", "walk.py"}
DEVICE_CODE = sorted([*(p for p in (ROOT / "kernels").glob("*.py") if p.name not in HOST_ONLY),
                      *(p for p in (ROOT / "infgen_ref").glob("*.py") if p.name not in HOST_ONLY),
                      *(ROOT / "runtime").glob("*_backend.py"), ROOT / "runtime" / "anysize.py",
                      ROOT / "runtime" / "cache.py", ROOT / "runtime" / "engine.py"])
SCALAR_CALLS = {"float", "int", "bool", "item", "tolist"}


def is_python_scalar(node: ast.AST) -> bool:
    """A number literal, float()/int()/bool()/x.item(), or arithmetic on those."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float, bool))
    if isinstance(node, ast.Call):
        f = node.func
        return (isinstance(f, ast.Name) and f.id in SCALAR_CALLS) or (isinstance(f, ast.Attribute) and f.attr in SCALAR_CALLS)
    if isinstance(node, ast.UnaryOp):
        return is_python_scalar(node.operand)
    if isinstance(node, ast.BinOp):
        return is_python_scalar(node.left) and is_python_scalar(node.right)
    return False


def scalar_element_stores(source: str) -> list[int]:
    """Line numbers of `x[...] = <python scalar>` and `x[...] op= <python scalar>`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AugAssign):
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Subscript) for t in targets) and is_python_scalar(value):
            lines.append(node.lineno)
    return lines


def test_checker_flags_scalar_stores_and_passes_fill():
    assert scalar_element_stores("n[-1] = float(P - K)\n") == [1]
    assert scalar_element_stores("x = 1\nn[0] += 2 * 3\n") == [2]
    assert scalar_element_stores("n[2:] = t.item()\n") == [1]
    assert scalar_element_stores("n[-1:].fill_(float(P))\nn[0] = other_tensor\nd['k'] = y\n") == []


@pytest.mark.parametrize("path", DEVICE_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_python_scalar_stores_into_tensors(path):
    assert scalar_element_stores(path.read_text()) == [], f"{path.name}: use t[i:j].fill_(x) instead"
