"""The documentation: the site builds offline with every warning an error (every page, link, anchor and API reference
resolves; the command-line reference renders from the parser), and the README stays short with working links."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(markdown: str) -> list[str]:
    """The targets of a Markdown text's inline links and images that point into the repository (no URL, no bare
    anchor), without their #fragment."""
    targets = [match.group(1) for match in LINK.finditer(markdown)]
    return [t.split("#", 1)[0] for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_site_builds_offline_with_no_warning(tmp_path):
    # Material prints a banner about MkDocs 2.0 on every build unless told not to; it is not a build warning.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    site = tmp_path / "site"
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    assert "segicl segment" in cli and "--example IMAGE MASK" in cli  # rendered from the parser, not the placeholder
    assert "SegICLPipeline" in (site / "reference" / "python-api.html").read_text(encoding="utf-8")
    assert (site / "results" / "quality.png").exists()


def test_the_build_fetches_nothing():
    """Material's web fonts come from Google unless switched off; no plugin may reach the network."""
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s+font: false\b", config, re.M)
    plugins = re.findall(r"^  - (\w[\w-]*)", config.split("\nplugins:", 1)[1].split("\n\n", 1)[0], re.M)
    assert set(plugins) <= {"search", "mkdocstrings"}, plugins


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_every_relative_link_of_the_readme_resolves():
    links = relative_links((REPO / "README.md").read_text(encoding="utf-8"))
    assert links, "the README links to the docs"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, missing


def test_relative_links_are_found_and_urls_are_not():
    text = ("[a](docs/a.md) ![p](docs/p.png) [b](docs/b.md#part) [web](https://example.org) [top](#top) "
            "[mail](mailto:x@example.org)")
    assert relative_links(text) == ["docs/a.md", "docs/p.png", "docs/b.md"]
