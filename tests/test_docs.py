"""The documentation site: `mkdocs build --strict` with TensorFlow made unimportable, the
generated pages (CLI reference from the parser, API reference from the docstrings, the
notebooks, BENCHMARKS.md) checked against their sources, and the built site opened in headless
Chromium (Debian's package, through Playwright) with every request recorded: nothing may go
to another host."""

from __future__ import annotations

import argparse
import ast
import functools
import html
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from convlab.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "convlab"
# `sys.modules[name] = None` makes `import name` fail: the build must never load TensorFlow.
BUILD = ("import runpy, sys\n"
         "sys.modules['tensorflow'] = sys.modules['keras'] = None\n"
         "sys.argv = ['mkdocs', 'build', '--strict', '--site-dir', sys.argv[1]]\n"
         "runpy.run_module('mkdocs', run_name='__main__')\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-c", BUILD, str(out)], cwd=ROOT, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _text(page_html: str) -> str:
    """What a reader sees of some HTML: the tags dropped, the entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page_html))


def _sections(page: Path) -> dict[str, str]:
    """{heading id: the HTML up to the next heading} of a built page."""
    parts = re.split(r'<h[1-6] id="([^"]+)"', page.read_text(encoding="utf-8"))
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _commands(parser: argparse.ArgumentParser, path: str = "convlab"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{path} {name}", child
                yield from _commands(child, f"{path} {name}")


def test_cli_reference_holds_every_subcommand_and_option_of_the_parser(site):
    sections = _sections(site / "reference" / "cli.html")
    commands = list(_commands(build_parser()))
    assert len(commands) > 10  # data prepare/inspect/bench, train, tune, serve, ...
    for path, parser in commands:
        section = sections.get(path.replace(" ", "-"))
        assert section is not None, f"no section for `{path}`"
        assert f"usage: {path}" in _text(section), path
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"<code>{option}" in section, f"`{path}` lacks {option}"


def _public(tree: ast.Module) -> list[str]:
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
            and not n.name.startswith("_")]


def test_api_reference_is_written_from_the_docstrings(site):
    page = (site / "reference" / "api.html").read_text(encoding="utf-8")
    text = _text(page)
    classifier = ast.parse((SRC / "classifier.py").read_text())
    cls = next(n for n in classifier.body if isinstance(n, ast.ClassDef) and n.name == "Classifier")
    docstring = ast.get_docstring(cls)
    assert docstring.split("\n")[0] in text  # "One run's model, loaded once."
    # Google-style sections parsed (Args: becomes a table of parameters), not shown raw
    assert "Args:" not in text and "Parameters:" in text
    package = ast.parse((SRC / "__init__.py").read_text())
    exported = next(ast.literal_eval(n.value) for n in package.body if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], "id", None) == "__all__")
    expected = [f"convlab.{name}" for name in _public(package) if name in exported]
    expected += [f"convlab.prediction.{name}"
                 for name in _public(ast.parse((SRC / "prediction.py").read_text()))]
    expected += ["convlab.classifier.Classifier", "convlab.classifier.Classifier.predict",
                 "convlab.config.TrainConfig", "convlab.config.TrainConfig.fine_tune_from"]
    missing = [name for name in expected if f'id="{name}"' not in page]
    assert len(expected) > 25 and missing == []


def test_notebooks_and_benchmarks_are_in_the_site(site):
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = (site / "notebooks" / notebook.with_suffix(".html").name).read_text()
        title = "".join(json.loads(notebook.read_text())["cells"][0]["source"]).splitlines()[0]
        assert title.lstrip("# ") in _text(page), notebook.name
        assert "data:image/" in page, f"{notebook.name}: no output image"  # outputs kept
    page = (site / "benchmarks.html").read_text(encoding="utf-8")
    text = _text(page)
    for heading in re.findall(r"^## (.+)$", (ROOT / "BENCHMARKS.md").read_text(), re.M):
        assert heading.replace("`", "") in text, heading
    # its plots (images under docs/) are shown, from the site's own copy
    plots = re.findall(r"!\[[^\]]*\]\(docs/([^)]+)\)", (ROOT / "BENCHMARKS.md").read_text())
    assert plots
    for plot in plots:
        assert f'src="{plot}"' in page and (site / plot).is_file(), plot


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("path", ["index.html", "notebooks/02_transfer_learning.html"])
def test_site_opens_offline_in_chromium(server, browser, path):
    context = browser.new_context()
    requested, errors = [], []

    def route(r):  # every request passes here; one to another host is refused and counted
        requested.append(r.request.url)
        if r.request.url.startswith(server):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    response = page.goto(server + path, wait_until="networkidle")
    assert response.status == 200
    page.wait_for_selector(".md-content h1")
    assert page.locator(".md-nav__link").count() > 10  # Material's navigation rendered
    if "notebooks/" in path:
        assert page.locator(".jp-Notebook .jp-OutputArea-output img").count() > 0
    context.close()
    outside = [u for u in requested if not u.startswith(server)]
    assert requested and outside == [], f"asked another host for {outside[:3]}"
    assert errors == []
