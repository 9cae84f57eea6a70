"""MkDocs hook: pages whose source lives outside docs/ and stays there.

- BENCHMARKS.md (at the repository's root, edited there) becomes benchmarks.md, read at each
  build. Its links to files of the repository that the site does not hold (benchmark
  scripts, results JSON) become plain text, so they cannot break the strict build; its
  images under docs/ (plots) are shown from the site's copy.
- The tutorial notebooks (notebooks/*.ipynb, committed with their outputs) become
  notebooks/*.ipynb pages, which mkdocs-jupyter renders without executing them.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("BENCHMARKS.md", "benchmarks.md")  # (in the repository, in the site)
NOTEBOOKS = "notebooks"
LINK = re.compile(r"(!?)\[([^\]]+)\]\(([^)\s]+)\)")


def site_path(repo_path: str) -> str | None:
    """Where a repository file is in the site (relative to docs/), or None when it is not."""
    if repo_path.startswith("docs/"):
        return repo_path.removeprefix("docs/")
    if repo_path == BENCHMARKS[0]:
        return BENCHMARKS[1]
    if repo_path.startswith(f"{NOTEBOOKS}/") and repo_path.endswith(".ipynb"):
        return repo_path
    return None


def _relink(match: re.Match) -> str:
    bang, text, target = match.groups()
    if re.match(r"[a-z][a-z0-9+.-]*:|#", target):  # a URL or an anchor: as it is
        return match.group(0)
    path, _, anchor = target.partition("#")
    inside = site_path(path)
    if inside is not None:  # a page, or an image under docs/ (a plot)
        return f"{bang}[{text}]({inside}{'#' + anchor if anchor else ''})"
    if text.strip("`") == path:
        return f"`{path}`"
    return f"{text} (`{path}`)"


def benchmarks_page() -> str:
    """BENCHMARKS.md with its links pointed at the site (it sits at the site's root, as at
    the repository's, so a link that stays keeps its meaning)."""
    return LINK.sub(_relink, (ROOT / BENCHMARKS[0]).read_text(encoding="utf-8"))


def on_config(config):
    # `mkdocs serve` rebuilds when these change too.
    config.watch.extend([str(ROOT / BENCHMARKS[0]), str(ROOT / NOTEBOOKS)])
    return config


@event_priority(50)  # before mkdocs-jupyter picks out the notebooks
def on_files(files, config):
    files.append(File.generated(config, BENCHMARKS[1], content=benchmarks_page()))
    for notebook in sorted((ROOT / NOTEBOOKS).glob("*.ipynb")):
        # A plain File read from the repository's root (not File.generated, whose source
        # mkdocs-jupyter's wrapper cannot see).
        files.append(File(f"{NOTEBOOKS}/{notebook.name}", src_dir=str(ROOT),
                          dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls))
    return files
