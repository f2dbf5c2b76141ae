#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb (nbdev's readme_nb), without Quarto.

Markdown cells are copied; code cells marked `#| hide` are left out, other code cells become
Python blocks. Relative links and images are rebased from nbs/ to the repository root.
`--check` exits with 1 if README.md differs from what the notebook gives.
"""
import json
import re
import sys
from configparser import ConfigParser
from pathlib import Path

root = Path(__file__).resolve().parent.parent
cfg = ConfigParser(delimiters=["="]); cfg.read(root / "settings.ini")
nbs = cfg["DEFAULT"].get("nbs_path", "nbs")
nb_path = root / nbs / cfg["DEFAULT"].get("readme_nb", "index.ipynb")


def rebase(md: str) -> str:
    def fix(m):
        target = m.group(2)
        if re.match(r"^([a-z]+:|#|/)", target): return m.group(0)
        return f"{m.group(1)}({nbs}/{target})"
    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", fix, md)


def render() -> str:
    nb = json.loads(nb_path.read_text())
    parts = ["<!-- Generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file. -->"]
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            parts.append(rebase(src.strip()))
        elif cell["cell_type"] == "code":
            lines = src.splitlines()
            if any(l.strip().startswith("#|") and "hide" in l for l in lines) or not src.strip(): continue
            parts.append("```python\n" + "\n".join(l for l in lines if not l.startswith("#|")) + "\n```")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text, readme = render(), root / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            print("README.md is out of date with nbs/index.ipynb: run python .ci/readme.py", file=sys.stderr)
            sys.exit(1)
        print("README.md matches nbs/index.ipynb")
    else:
        readme.write_text(text)
        print(f"wrote {readme}")
