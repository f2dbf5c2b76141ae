"""The library's code stays readable: no semicolon statements, no line over 120 characters (nbdev's own `__all__` and
module docstring lines aside), no function over 40 lines. Each check names the places that break it."""
import ast
import io
import tokenize
from pathlib import Path

MODULES = sorted((Path(__file__).resolve().parent.parent / "mrcnn_nb").glob("*.py"))
GENERATED = ("_modidx.py",)


def _sources():
    return [(p.name, p.read_text()) for p in MODULES if p.name not in GENERATED]


def test_no_semicolon_statements():
    found = [f"{name}:{t.start[0]}" for name, src in _sources()
             for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.OP and t.string == ";"]
    assert found == [], f"split these statements onto their own lines (in the notebooks): {found}"


def test_no_line_over_120_characters():
    long = []
    for name, src in _sources():
        doc_end = ast.parse(src).body[0].end_lineno if src.startswith('"""') else 0   # the module docstring
        in_all = False
        for n, line in enumerate(src.splitlines(), 1):
            in_all = line.startswith("__all__") or (in_all and line.startswith(" "))
            if len(line) > 120 and n > doc_end and not in_all: long.append(f"{name}:{n} ({len(line)})")
    assert long == [], long


def test_no_function_over_40_lines():
    over = [f"{name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})" for name, src in _sources()
            for node in ast.walk(ast.parse(src)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 40]
    assert over == [], over
