"""`convlab evaluate | report | predict | export`: what a trained run is worth and how to use it."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from convlab.cli.console import add_run_args, console, plain
from convlab.errors import ConvlabError, check_at_least
from convlab.prediction import TTA_MODES
from convlab.serving import FORMATS, QUANTIZE
from convlab.usertext import csv_row, visible


def cmd_evaluate(args) -> int:
    from convlab.evaluation.metrics import calibration_line, evaluate, format_metrics

    metrics = evaluate(args.run, data=args.data, split=args.split, model=args.model,
                       top_k=args.top_k, tta=args.tta, image_size=args.image_size)
    print(format_metrics(metrics, width=120), end="")
    print(calibration_line(metrics))
    _print_mistakes(metrics)
    return 0


def _print_mistakes(metrics: dict, shown: int = 10) -> None:
    """The most confident mistakes with their files (all of them are in mistakes.csv)."""
    from convlab.evaluation.metrics import read_mistakes

    rows = read_mistakes(metrics["mistakes_file"])
    if not rows:
        print("no mistakes")
        return
    print(f"{len(rows)} mistakes, the most confident first (all in "
          f"{visible(metrics['mistakes_file'])}):")
    for row in rows[:shown]:
        print(f"  {visible(row['path'] or '(file unknown)')}: labelled {visible(row['label'])}, "
              f"predicted {visible(row['predicted'])} (p={float(row['p_predicted']):.2f})")


def cmd_review(args) -> int:
    from convlab.evaluation.review import review

    for flag, value in (("show", args.show), ("top", args.top)):
        check_at_least(flag, value, 0)
    result = review(args.run, model=args.model, folds=args.folds, shown=args.show,
                    progress=not args.quiet)
    print(f"reviewed {result['photos']:,} photos ({', '.join(result['splits'])}) in "
          f"{result['seconds']:.0f} s: {result['flagged']} suspected label error(s); "
          f"probabilities: {result['method']} (accuracy {result['accuracy']:.1%})")
    for issue in result["issues"][:args.top]:
        print(f"  #{issue['rank']} {visible(issue['path'])}: labelled "
              f"{visible(issue['label'])} (p={issue['p_label']:.2f}), looks like "
              f"{visible(issue['suggested'])} "
              f"(p={issue['p_suggested']:.2f})")
    for note in result.get("notes", []):
        print(f"note: {visible(note)}")
    groups = result["duplicates"]
    if groups:
        print(f"{len(groups)} duplicate group(s) from the ingest (on the page)")
    print(f"review page: {result['page']}\nall flagged photos: {result['csv']}")
    return 0


def cmd_calibrate(args) -> int:
    from convlab.prediction import calibrate

    print(calibrate(args.run, args.model, progress=not args.quiet).summary())
    return 0


def cmd_report(args) -> int:
    from convlab.evaluation.report import report

    print(report(args.run))
    return 0


def cmd_predict(args) -> int:
    from convlab.inference import predict
    from convlab.prediction import verdict

    rows, skipped = predict(args.run, args.inputs, top_k=args.top_k,
                            batch_size=args.batch_size, model=args.model, tta=args.tta,
                            reject=not args.no_reject)
    # Machine-readable stdout stays clean: skipped files go to stderr.
    for s in skipped:
        print(visible(f"skipped {s['path']}: {s['reason']}" + (
            f" ({s['detail']})" if s["detail"] else "")), file=sys.stderr)
    if not rows:  # an error, and no empty table before it
        raise ConvlabError(f"none of the {len(skipped)} input file(s) could be classified "
                           "(reasons above); give image files or folders of them")
    if args.format == "json":
        print(json.dumps({"predictions": rows, "skipped": skipped}, indent=1))
    elif args.format == "csv":
        _print_csv(rows)
    else:
        from rich.table import Table

        table = Table(title=f"{len(rows)} images, run {plain(args.run)} ({args.model} model)")
        table.add_column("path", overflow="fold")
        table.add_column(f"top {args.top_k}")
        for r in rows:
            said = (f"[bold]{verdict(r['score'], r['threshold'])}[/]; "
                    if r["none_of_the_classes"] else "")
            table.add_row(plain(r["path"]), said + ", ".join(
                f"{plain(p['class'])} {p['probability']:.1%}" for p in r["predictions"]))
        console().print(table)
    if not args.no_reject and rows[0]["none_of_the_classes"] is None:
        print("note: this run is not calibrated: the model's own probabilities, and no \"none "
              f"of the classes\" answer; `convlab calibrate {visible(args.run)}` fits both",
              file=sys.stderr)
    return 0


def _print_csv(rows: list[dict]) -> None:
    """predict's CSV on stdout; names a spreadsheet would run as formulas are quoted."""
    k = max((len(r["predictions"]) for r in rows), default=0)
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "none_of_the_classes", "score"]
                    + [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "probability")])
    for r in rows:
        verdict = "" if r["none_of_the_classes"] is None else str(r["none_of_the_classes"])
        score = "" if r["score"] is None else f"{r['score']:.4f}"
        writer.writerow(csv_row([r["path"], verdict, score] + [v for p in r["predictions"] for v in (
            p["class"], f"{p['probability']:.6f}")]))


def cmd_export(args) -> int:
    from convlab.serving import export

    drop = None if args.max_accuracy_drop is None else args.max_accuracy_drop / 100
    export(args.run, args.format, args.quantize, args.out, model=args.model, data=args.data,
           max_accuracy_drop=drop)  # it says what it wrote and how it verified
    return 0


def _add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="test-time augmentation: flip averages each image and its mirror")


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "evaluate", help="metrics of a run's model: accuracy, per class, confusion matrix",
        description="Evaluate RUN's model on its validation split, or on --data (a prepared "
                    "folder or a folder of class subfolders, matched to the model's classes "
                    "by name). Prints a table and writes RUN/metrics.json (the run's own split "
                    "at its test size), or RUN/evaluations/DATA-SPLIT[-SIZEpx][-TTA]/"
                    "metrics.json for other data, splits, sizes or --tta.")
    add_run_args(ev)
    ev.add_argument("--data", help="prepared folder or photo folder (default: the run's data)")
    ev.add_argument("--split", choices=("train", "validation", "test", "all"),
                    help="default: validation; all the photos of a photo folder")
    ev.add_argument("--top-k", type=int, help="k of the top-k accuracy (min(3, classes-1))")
    _add_tta(ev)
    ev.add_argument("--image-size", type=int, metavar="PX",
                    help="evaluate at this size (default: the run's test size: its training "
                    "size times its test_scale, 1 unless the recipe sets it)")
    ev.set_defaults(func=cmd_evaluate)


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    rep = subparsers.add_parser(
        "report", help="write RUN/report.html: metrics, plots, model and config, offline",
        description="Write one self-contained HTML report for RUN (evaluating it first if "
                    "needed) and print its path.")
    add_run_args(rep, model=False)
    rep.set_defaults(func=cmd_report)


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    pr = subparsers.add_parser(
        "predict", help="classify image files and folders with a trained run",
        description="Classify images (any format `data prepare` accepts; folders are walked "
                    "recursively) with RUN's model. Unreadable files are reported on stderr.")
    add_run_args(pr)
    pr.add_argument("inputs", nargs="+", metavar="IMAGE|DIR",
                    help="image files and folders (walked recursively)")
    pr.add_argument("--top-k", type=int, default=3, help="classes per image")
    pr.add_argument("--format", choices=("table", "json", "csv"), default="table",
                    help="a table for people; json or csv for programs")
    pr.add_argument("--batch-size", type=int, default=64, help="images per model call")
    pr.add_argument("--no-reject", action="store_true",
                    help="the bare top-k, without the \"none of the classes\" answer for "
                         "photos unlike the run's training photos")
    _add_tta(pr)
    pr.set_defaults(func=cmd_predict)


def _add_calibrate(subparsers: argparse._SubParsersAction) -> None:
    cal = subparsers.add_parser(
        "calibrate", help="fit RUN's temperature and \"none of the classes\" threshold",
        description="Fit, on RUN's validation split, the temperature that makes its "
                    "probabilities honest (one scalar, by NLL; the accuracy does not change) "
                    "and the out-of-scope threshold (cosine similarity to the 10th nearest "
                    "training photo's features, passed by 95% of the validation photos). "
                    "Training does this at its end; run it for older runs. Writes "
                    "RUN/calibration.json and RUN/calibration-features.npy.")
    add_run_args(cal)
    cal.add_argument("--quiet", action="store_true", help="no progress bar")
    cal.set_defaults(func=cmd_calibrate)


def _add_review(subparsers: argparse._SubParsersAction) -> None:
    rv = subparsers.add_parser(
        "review", help="suspected label errors and duplicate photos, with their files",
        description="Find photos whose given label the model confidently contradicts "
                    "(cleanlab confident learning on out-of-sample probabilities: K-fold "
                    "on the backbone's features for pretrained models, the validation split "
                    "for models trained from scratch), and the ingest's duplicates. Writes "
                    "RUN/review/review.html (thumbnails and paths), label_issues.csv and "
                    "review.json.")
    add_run_args(rv)
    rv.add_argument("--folds", type=int, default=5, help="K of the K-fold (default: 5)")
    rv.add_argument("--show", type=int, default=60,
                    help="photos shown on the page (default: 60; all are in the CSV)")
    rv.add_argument("--top", type=int, default=10, help="photos printed (default: 10)")
    rv.add_argument("--quiet", action="store_true", help="no progress bars")
    rv.set_defaults(func=cmd_review)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    ex = subparsers.add_parser(
        "export", help="export a run for serving (keras, savedmodel, tflite, onnx), verified",
        description="Write RUN's model as a file that takes raw [0, 255] images (uint8 for "
                    "tflite), with labels.txt and export.json (the verification numbers). "
                    "The export is verified on the run's validation split: it fails when its "
                    "accuracy is more than --max-accuracy-drop below the Keras model's.")
    add_run_args(ex)
    ex.add_argument("--format", choices=FORMATS, required=True,
                    help="keras, savedmodel, tflite (for phones, with --quantize) or onnx")
    ex.add_argument("--quantize", choices=QUANTIZE, default=None,
                    help="tflite only: float16 weights, int8 weights and activations, or "
                         "dynamic-range (int8 weights)")
    ex.add_argument("--out", default=None, help="folder (default RUN/export/FORMAT[-QUANTIZE])")
    ex.add_argument("--data", default=None, help="the run's prepared data, if it has moved")
    ex.add_argument("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
                    help="accuracy the export may lose against the Keras model, in points "
                         "(default: 0.5 for float exports, 1 for quantized ones)")
    ex.set_defaults(func=cmd_export)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the subcommands that use a run folder to the `convlab` parser."""
    _add_evaluate(subparsers)
    _add_report(subparsers)
    _add_predict(subparsers)
    _add_calibrate(subparsers)
    _add_review(subparsers)
    _add_export(subparsers)
