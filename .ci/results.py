#!/usr/bin/env python3
"""Write the ablation results table (mrcnn_nb.ablations.results_markdown, from nbs/results/ablations) into
nbs/index.ipynb between its results markers, then README.md (python .ci/readme.py)."""
import json
import re
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root))
from mrcnn_nb.ablations import results_markdown  # noqa: E402

path = root / "nbs" / "index.ipynb"
nb = json.loads(path.read_text())
cell = next(c for c in nb["cells"] if c["cell_type"] == "markdown" and "<!-- results:start -->" in "".join(c["source"]))
src = re.sub(r"<!-- results:start -->\n.*?<!-- results:end -->", lambda m: "<!-- results:start -->\n" + results_markdown().strip() + "\n<!-- results:end -->",
             "".join(cell["source"]), flags=re.S)
cell["source"] = src.splitlines(keepends=True)
path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
print(f"wrote the results table into {path}")
subprocess.run([sys.executable, str(root / ".ci" / "readme.py")], check=True)
