"""`convlab predict` and `convlab export`: thin subcommands over convlab.predict / convlab.export."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from convlab.runs import TTA_MODES


def cmd_predict(args) -> int:
    from convlab.predict import predict

    rows, skipped = predict(args.run, args.inputs, top_k=args.top_k,
                            batch_size=args.batch_size, model=args.model, tta=args.tta)
    if args.format == "json":
        print(json.dumps({"predictions": rows, "skipped": skipped}, indent=1))
    elif args.format == "csv":
        k = max((len(r["predictions"]) for r in rows), default=0)
        writer = csv.writer(sys.stdout)
        writer.writerow(["path"] + [f"{name}_{i}" for i in range(1, k + 1)
                                    for name in ("class", "probability")])
        for r in rows:
            writer.writerow([r["path"]] + [v for p in r["predictions"]
                                           for v in (p["class"], f"{p['probability']:.6f}")])
    else:
        from rich.table import Table

        from convlab.cli import _console

        table = Table(title=f"{len(rows)} images, run {args.run} ({args.model} model)")
        table.add_column("path", overflow="fold")
        table.add_column(f"top {args.top_k}")
        for r in rows:
            table.add_row(r["path"], ", ".join(f"{p['class']} {p['probability']:.1%}"
                                               for p in r["predictions"]))
        _console().print(table)
    # Machine-readable stdout stays clean: skipped files go to stderr.
    for s in skipped:
        print(f"skipped {s['path']}: {s['reason']}" + (f" ({s['detail']})" if s["detail"] else ""),
              file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from convlab.export import export

    report = export(args.run, args.format, args.quantize, args.out, model=args.model,
                    data=args.data)
    check = report["verification"]
    print(f"exported {report['artifact']} ({report['bytes']:,} bytes), labels "
          f"{report['labels']}; input {report['input']['dtype']} "
          f"{tuple(report['input']['shape'])} in [0, 255]")
    print(f"verified on {check['images']} images against the Keras model: top-1 agreement "
          f"{check['top1_agreement']:.3f} ({check['top1_agreement_decided']:.3f} without near "
          f"ties), max |diff| {check['max_abs_diff']:.2e} (tolerance "
          f"{check['tolerance']['max_abs_diff']:g}); details in export.json")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` and `export` subcommands to the `convlab` parser."""
    pr = subparsers.add_parser(
        "predict", help="classify image files and folders with a trained run",
        description="Classify images (any format `data prepare` accepts; folders are walked "
                    "recursively) with RUN's model. Unreadable files are reported on stderr.")
    pr.add_argument("run", help="run folder written by `convlab train`")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE|DIR")
    pr.add_argument("--top-k", type=int, default=3, help="classes per image (3)")
    pr.add_argument("--format", choices=("table", "json", "csv"), default="table")
    pr.add_argument("--model", choices=("best", "final"), default="best",
                    help="best validation accuracy, or the last epoch (best)")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--tta", choices=TTA_MODES, default="none",
                    help="test-time augmentation: flip averages each image and its mirror")
    pr.set_defaults(func=cmd_predict)

    ex = subparsers.add_parser(
        "export", help="export a run for serving (keras, savedmodel, tflite), verified",
        description="Write RUN's model as a file that takes raw [0, 255] images (uint8 for "
                    "tflite), with labels.txt and export.json (the verification numbers).")
    ex.add_argument("run", help="run folder written by `convlab train`")
    ex.add_argument("--format", choices=("keras", "savedmodel", "tflite"), required=True)
    ex.add_argument("--quantize", choices=("float16", "int8", "dynamic"), default=None,
                    help="tflite only: float16 weights, int8 weights and activations, or "
                         "dynamic-range (int8 weights)")
    ex.add_argument("--out", default=None, help="folder (default RUN/export/FORMAT[-QUANTIZE])")
    ex.add_argument("--model", choices=("best", "final"), default="best")
    ex.add_argument("--data", default=None, help="the run's prepared data, if it has moved")
    ex.set_defaults(func=cmd_export)
