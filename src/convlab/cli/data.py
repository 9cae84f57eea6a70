"""`convlab data prepare | inspect | bench`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from convlab.cli.console import console, plain
from convlab.errors import ConvlabError

if TYPE_CHECKING:  # the data layer loads Pillow: not for `convlab --help`
    from convlab.data.manifest import Manifest


def cmd_data_prepare(args) -> int:
    from convlab.data.ingest import PREPARE_OPTIONS, prepare

    if (args.src is None) == (args.labels is None):
        raise ConvlabError("give the photos as SRC or as --labels FILE.csv (one of the two), "
                           f"received: SRC={args.src!r}, --labels={args.labels!r}")
    options = {option.name: getattr(args, option.name) for option in PREPARE_OPTIONS}
    manifest = prepare(args.src or args.labels, args.out, **options, progress=not args.quiet)
    print_prepare_summary(manifest, args.out)
    return 0


def print_prepare_summary(manifest: Manifest, out) -> None:
    from rich.table import Table

    from convlab.data.manifest import MANIFEST

    con = console()
    if manifest.resumed:
        con.print(f"[bold]{plain(out)}[/] already holds this dataset, unchanged; nothing to do.")
    splits = list(manifest.per_split)
    table = Table(title=f"{plain(out)}: {manifest.total} images, "
                        f"{manifest.stored_size} px, {len(manifest.shards)} shards")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    shown = list(manifest.per_class)
    if len(shown) > 30:  # a wall of rows: the smallest classes (where trouble is) and the largest
        shown = sorted(shown, key=lambda c: (sum(manifest.per_class[c].values()), c))
        table.title += f"; the 15 smallest and 5 largest of {len(shown)} classes"
        shown = shown[:15] + [None] + shown[-5:]
    for label in shown:
        if label is None:
            table.add_row(f"... {len(manifest.per_class) - 20} more ({MANIFEST})")
            continue
        per_split = manifest.per_class[label]
        table.add_row(plain(label), *(str(per_split.get(s, 0)) for s in splits),
                      str(sum(per_split.values())))
    table.add_row("[bold]all", *(f"[bold]{manifest.per_split[s]}" for s in splits),
                  f"[bold]{manifest.total}")
    con.print(table)
    line = (f"kept {manifest.total} of {manifest.candidates} candidate files; "
            f"skipped {len(manifest.skipped)}")
    if manifest.skipped_by_reason:
        line += " (" + ", ".join(f"{n} {r}" for r, n in manifest.skipped_by_reason.items()) + ")"
    line += f"; ignored {len(manifest.ignored)} non-image files"
    con.print(line)
    if manifest.enlarged:
        con.print(f"[yellow]note:[/] {manifest.enlarged} of {manifest.total} photos are "
                  f"smaller than {manifest.stored_size} px on their short side and were "
                  "enlarged (upsampled: no more detail than the original)")
    for note in manifest.notes:
        con.print(f"[yellow]note:[/] {plain(note)}", highlight=False)
    for label in manifest.empty_classes:
        con.print(f"[yellow]warning:[/] class folder {plain(repr(label))} has no usable images; "
                      "it is not a class of this dataset")
    if manifest.skipped:
        con.print(f"every skipped file and its reason: {plain(Path(out) / MANIFEST)} "
                      "(\"skipped\", \"duplicates\")")


def cmd_data_inspect(args) -> int:
    from rich.table import Table

    from convlab.data.inspect import counts, sample_grid

    info = counts(args.path)
    table = Table(title=plain(args.path) + ("" if info["prepared"] else " (not prepared)"))
    table.add_column("class")
    for split in info["splits"]:
        table.add_column(split, justify="right")
    for label in info["classes"]:
        table.add_row(plain(label), *(str(info["per_class"][label].get(s, 0))
                                      for s in info["splits"]))
    con = console()
    con.print(table)
    con.print(f"skipped: {info['skipped']}, ignored: {info['ignored']}")
    # Into a prepared folder (convlab's own), never into a folder of the user's photos.
    out = args.out or (Path(args.path) / "samples.png" if info["prepared"] and os.access(
        args.path, os.W_OK) else Path(f"samples-{Path(args.path).resolve().name}.png"))
    png = sample_grid(args.path, out, split=args.split, count=args.count)
    con.print(f"sample grid: {plain(png)}")
    return 0


def cmd_data_bench(args) -> int:
    from rich.table import Table

    from convlab.data.bench import bench

    if not 0 <= args.latency_ms <= 60_000:
        raise ConvlabError(f"--latency-ms must be between 0 and 60000, received: "
                           f"{args.latency_ms}")
    rows, info = bench(args.path, split=args.split, batch_size=args.batch_size,
                       rounds=args.rounds, size=args.size, latency_ms=args.latency_ms,
                       progress=not args.quiet)
    base = {r.augment: r.images_per_s for r in rows if r.path == "per-file"}
    decode = next(r.images_per_s for r in rows if r.path == "decode only")
    latency = f", {args.latency_ms:g} ms per file opened" if args.latency_ms else ""
    table = Table(title=f"input pipeline, {info['images']} {info['split']} images at "
                        f"{info['size']} px, batch {info['batch_size']}{latency}, median of "
                        f"{info['rounds']} rounds")
    numbers = ("images/s", "vs per-file", "vs decode only")
    for col in ("path", "cache", "augment", *numbers):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in rows:
        vs_files = f"{r.images_per_s / base[r.augment]:.2f}x" if r.augment in base and \
            r.path != "decode only" else "-"
        table.add_row(r.path, r.cache, "yes" if r.augment else "no", f"{r.images_per_s:,.0f}",
                      vs_files, f"{r.images_per_s / decode:.2f}x")
    console().print(table)
    return 0


def _add_prepare_options(parser: argparse.ArgumentParser) -> None:
    """A flag for each of `prepare`'s options (`PREPARE_OPTIONS`: its name, type, default and
    help); `--help` adds "(default: X)" from the default."""
    from convlab.data.ingest import PREPARE_OPTIONS  # no Pillow: `convlab --help` stays quick

    for option in PREPARE_OPTIONS:
        if option.type is bool:
            parser.add_argument(option.flag, action="store_true", help=option.help)
        else:
            parser.add_argument(option.flag, type=option.type, default=option.default,
                                help=option.help)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `data` and its subcommands to the `convlab` parser."""
    data = sub.add_parser("data", help="prepare, inspect and benchmark image data")
    dsub = data.add_subparsers(dest="data_command", required=True)

    prep = dsub.add_parser(
        "prepare", help="photos -> validated, deduplicated, sharded TFRecords + manifest.json",
        description="Validate, deduplicate, resize and shard photos into TFRecords. SRC is a "
                    "folder of class subfolders, a folder of split folders (train/, val/, "
                    "test/) holding them, a labels file (--labels), a glob or gs:// pattern "
                    "(class = parent folder), 'flowers' (the public 5-class set, downloaded "
                    "once) or 'synthetic' (generated shapes, for offline demos).")
    prep.add_argument("src", nargs="?", help="the photos (or give --labels FILE.csv instead)")
    prep.add_argument("out", help="the output folder (created; resumable)")
    prep.add_argument("--labels", metavar="FILE.csv",
                      help="a labels file as the source: a path column and a label column "
                           "(optionally a split column), paths relative to the file")
    _add_prepare_options(prep)
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=cmd_data_prepare)

    insp = dsub.add_parser("inspect", help="counts per class/split and a PNG grid of samples")
    insp.add_argument("path", help="prepared folder or folder of class subfolders")
    insp.add_argument("--out", default=None,
                      help="PNG path (default: PATH/samples.png for a prepared folder, else "
                           "samples-NAME.png here; nothing is written into a photo folder)")
    insp.add_argument("--split", default="train", help="the split to draw samples from")
    insp.add_argument("--count", type=int, default=25, help="images in the grid")
    insp.set_defaults(func=cmd_data_inspect)

    bench = dsub.add_parser("bench", help="images/s: per-file JPEG vs TFRecord pipeline")
    bench.add_argument("path", help="prepared folder (or photo folder, prepared first)")
    bench.add_argument("--split", default="train", help="the split to read")
    bench.add_argument("--batch-size", type=int, default=64, help="images per batch")
    bench.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    bench.add_argument("--size", type=int, default=128, help="size when preparing a photo folder")
    bench.add_argument("--latency-ms", type=float, default=0.0,
                       help="simulate cloud storage: each file opened first waits this long")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_data_bench)
