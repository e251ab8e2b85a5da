"""No verdict is typed in by hand: outside kvdirect_interp/verdicts/, no code cell of a notebook
source (notebooks/*.py) and no module of the package holds a verdict string literal ("holds",
"holds under conditions", "fails"), and no notebook defines its own verdict rule (a function
named *verdict*). Verdicts come from the `verdicts` functions, applied to measurements."""

from __future__ import annotations

import ast
from pathlib import Path

from kvdirect_interp.verdicts import OUTCOMES

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kvdirect_interp"


def scanned() -> list[Path]:
    notebooks = sorted((ROOT / "notebooks").glob("*.py"))
    modules = sorted(p for p in PACKAGE.rglob("*.py") if (PACKAGE / "verdicts") not in p.parents)
    return notebooks + modules


def typed_verdicts(source: str, rules: bool = True) -> list[tuple[int, str]]:
    """(line, what) for each verdict literal in Python source, and each local verdict rule
    when `rules` (notebooks; a module may name other checks so, as _converted.py does).
    Docstrings and comments are prose: a literal counts only when it is a whole verdict."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.strip().lower() in OUTCOMES:
                found.append((node.lineno, f"verdict literal {node.value!r}"))
        elif not rules:
            continue
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if "verdict" in node.name.lower():
                found.append((node.lineno, f"local verdict rule {node.name}()"))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            for t in node.targets:
                if isinstance(t, ast.Name) and "verdict" in t.id.lower():
                    found.append((node.lineno, f"local verdict rule {t.id} = lambda"))
    return sorted(found)


def test_the_scan_catches_literals_and_local_rules():
    src = (
        'rows = [("2 whole", "max KL 0", "holds")]\n'
        'x = "Holds under conditions " if ok else "fails"\n'
        "def verdict(n_ok, n):\n    return n_ok == n\n"
        "my_verdict = lambda r: r\n"
        'doc = "this claim holds only with equal shapes"\n'
        "from kvdirect_interp import verdicts as vd\nv = vd.HOLDS\n"
    )
    assert [line for line, _ in typed_verdicts(src)] == [1, 2, 2, 3, 5]
    assert [line for line, _ in typed_verdicts(src, rules=False)] == [1, 2, 2]


def test_no_file_types_a_verdict():
    files = scanned()
    assert any(p.name == "verify.py" for p in files) and any(
        p.parent.name == "notebooks" for p in files
    )
    problems = [
        f"{p.relative_to(ROOT)}:{line}: {what}"
        for p in files
        for line, what in typed_verdicts(p.read_text(), rules=p.parent.name == "notebooks")
    ]
    assert not problems, (
        "verdicts typed by hand (compute them with kvdirect_interp.verdicts):\n"
        + "\n".join(problems)
    )
