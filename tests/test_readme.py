"""The README renders on GitHub: every relative link and image points at a file of the repository."""
import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent


def test_readme_links_and_images_exist():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text) + re.findall(r"<img[^>]+src=\"([^\"]+)\"", text)
    relative = [t.split("#")[0] for t in targets if not re.match(r"^([a-z]+:|#)", t)]
    assert relative, "no relative links found: the pattern is wrong"
    missing = [t for t in relative if not (ROOT / unquote(t)).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"
    images = [t for t in relative if t.lower().endswith((".png", ".jpg", ".jpeg", ".svg", ".gif"))]
    assert len(images) >= 3 and all((ROOT / t).stat().st_size < 500_000 for t in images)
