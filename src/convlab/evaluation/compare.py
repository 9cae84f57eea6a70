"""`compare`: two or more runs side by side: the settings that differ, the results, and the
training curves overlaid; as values (for the terminal) and as one self-contained HTML page
(inline CSS, the plot as a PNG data URI, nothing fetched), like the report.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

from convlab.config import flat_settings
from convlab.errors import ConvlabError
from convlab.files import atomic_path, figure, literal
from convlab.runlist import COLUMNS, RunRow, read_history, read_row, run_settings
from convlab.runs import RunFolder

# What `convlab train`'s automatic plan measured and expected on the machine it ran on: not
# settings (the settings it chose are the config's own fields), and different in every run.
NOT_SETTINGS = ("plan.measured.", "plan.reasons", "plan.expected_minutes")


class _Missing:
    """A setting a run did not record (made by a version without it)."""

    def __repr__(self) -> str:
        return "-"


MISSING = _Missing()


@dataclass(frozen=True)
class Comparison:
    """Runs side by side; every list is in the order the runs were given."""

    rows: list[RunRow]
    settings: list[tuple[str, list]]  # (dotted key, each run's value): the keys that differ
    same: int  # settings equal in every run
    histories: list[list[dict]]  # each run's history.csv rows


def find_run(run: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> Path:
    """A run folder given as a path, or by its name in `runs_dir` (as `convlab runs` lists
    it).

    Raises:
        ConvlabError: neither is a run folder.
    """
    for path in (Path(run), Path(runs_dir) / run):
        if RunFolder(path).config.is_file():
            return path
    raise ConvlabError(f"'{run}' is not a run folder (no {RunFolder(run).config.name} there "
                       f"or in '{Path(runs_dir) / run}'); give run folders, or names that "
                       f"`convlab runs {runs_dir}` lists")


def compare_runs(runs: list[str | os.PathLike], runs_dir: str | os.PathLike = "runs"
                 ) -> Comparison:
    """Compare run folders (paths, or names in `runs_dir`).

    Raises:
        ConvlabError: fewer than two runs, one that is not a run folder, or a damaged
            config.json.
    """
    if len(runs) < 2:
        raise ConvlabError(f"compare needs at least 2 runs, received {len(runs)}"
                           f"{': ' + ', '.join(map(str, runs)) if runs else ''}; give two or "
                           "more run folders (or names `convlab runs` lists)")
    paths = [find_run(r, runs_dir) for r in runs]
    flats = [{k: v for k, v in flat_settings(run_settings(path)[0]).items()
              if not k.startswith(NOT_SETTINGS)} for path in paths]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    settings = []
    for key in keys:
        values = [flat.get(key, MISSING) for flat in flats]
        if len({_key(v) for v in values}) > 1:
            settings.append((key, values))
    return Comparison([read_row(p) for p in paths], settings, len(keys) - len(settings),
                      [read_history(p) for p in paths])


def _key(value) -> str:
    return "\0missing" if value is MISSING else json.dumps(value, sort_keys=True)


def shown(value) -> str:
    """A setting's value as people read it: `-` for one the run did not record."""
    if value is MISSING:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value)


def best_epoch(history: list[dict]) -> int | None:
    """The epoch (counted from 1) with the best val_accuracy (accuracy without one)."""
    metric = "val_accuracy" if any("val_accuracy" in h for h in history) else "accuracy"
    scored = [h for h in history if metric in h]
    return max(scored, key=lambda h: h[metric])["epoch"] + 1 if scored else None


def results(comparison: Comparison) -> list[tuple[str, list[str]]]:
    """(what, each run's text): the listing's columns, then the best epoch and the speed."""
    rows = comparison.rows
    found = [(header, [text(r) for r in rows]) for header, text in COLUMNS[1:]]
    found.append(("best epoch", [str(e) if (e := best_epoch(h)) else "-"
                                 for h in comparison.histories]))
    found.append(("training images/s", [
        "-" if r.images_per_second is None else f"{r.images_per_second:,.1f}" for r in rows]))
    return found


CURVES = (("val_accuracy", "validation accuracy"), ("val_loss", "validation loss"))


def curves_png(comparison: Comparison) -> bytes | None:
    """Validation accuracy and loss per epoch, one line per run (its training accuracy and
    loss, dashed, for a run without a validation split); None when no run has an epoch."""
    if not any(comparison.histories):
        return None
    fig = figure(figsize=(13, 4.4))
    axes = fig.subplots(1, len(CURVES))
    for ax, (metric, title) in zip(axes, CURVES, strict=True):
        for row, history, colour in zip(comparison.rows, comparison.histories,
                                        _colours(len(comparison.rows)), strict=True):
            measured = metric if any(metric in h for h in history) else metric[len("val_"):]
            points = [(h["epoch"] + 1, h[measured]) for h in history if measured in h]
            if points:
                dashed = measured != metric
                ax.plot(*zip(*points, strict=True), "--" if dashed else "-", marker="o",
                        markersize=3, color=colour,
                        label=literal(row.name) + (" (training's)" if dashed else ""))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _colours(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["tab10" if n <= 10 else "tab20"](i % 20) for i in range(n)]


def _table(header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f"<tr><th>{escape(what)}</th>" + "".join(
        f"<td>{escape(v)}</td>" for v in values) + "</tr>" for what, values in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(comparison: Comparison, out: str | os.PathLike) -> Path:
    """Write the comparison as one self-contained HTML page at `out`; returns its path."""
    from convlab.evaluation.report import CSS
    from convlab.runlist import ACCURACY_NOTE
    from convlab.version import __version__

    rows = comparison.rows
    names = [r.name for r in rows]
    header = ["", *names]
    png = curves_png(comparison)
    plot = (f'<figure><img alt="validation accuracy and loss per epoch" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
            "<figcaption>Validation accuracy and loss per epoch, one line per run (dashed: "
            "training's, for a run without a validation split).</figcaption></figure>"
            if png else "<p>No run has finished an epoch yet.</p>")
    differing = (_table(header, [(k, [shown(v) for v in values])
                                 for k, values in comparison.settings])
                 if comparison.settings else "<p>None: the runs were made with the same "
                                             "settings.</p>")
    folders = "".join(f"<li><code>{escape(str(r.path))}</code></li>" for r in rows)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>convlab: {escape(" vs ".join(names))}</title><style>{CSS}</style></head>
<body><main>
<h1>{len(rows)} runs compared</h1><p class="sub">{escape(" · ".join(names))}</p>
<section><h2>Settings that differ</h2>{differing}
<p class="sub">{comparison.same} other settings are the same in every run.</p></section>
<section><h2>Results</h2>{_table(header, results(comparison))}
<p class="sub">{escape(ACCURACY_NOTE)}.</p></section>
<section><h2>Training curves</h2>{plot}</section>
<section><h2>Run folders</h2><ul>{folders}</ul></section>
<footer>convlab {escape(__version__)} · {escape(time.strftime("%Y-%m-%d %H:%M:%S"))}</footer>
</main></body></html>
"""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
