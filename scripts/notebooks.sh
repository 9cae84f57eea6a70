#!/usr/bin/env bash
# Execute the tutorial notebooks at their default parameters (on ../shared/data/flower_photos)
# and write their outputs back into notebooks/*.ipynb, then strip what belongs to this machine:
# papermill's input_path/output_path, and absolute paths in outputs (made relative where they
# lie in the checkout; any other one stops the script).
#
#   bash scripts/notebooks.sh                      # all of them, from a fresh notebooks/work/
#   bash scripts/notebooks.sh 03_convnets_from_scratch.ipynb   # some, reusing notebooks/work/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -d ../shared/data/flower_photos ]; then
  echo "scripts/notebooks.sh: ../shared/data/flower_photos not found; the committed outputs" \
       "are made on the real photos (the notebooks alone fall back to synthetic shapes)" >&2
  exit 2
fi
exec .venv/bin/python - "$@" <<'EOF'
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill

notebooks = Path("notebooks").resolve()
names = sys.argv[1:] or sorted(p.name for p in notebooks.glob("[0-9][0-9]_*.ipynb"))
if not sys.argv[1:]:
    shutil.rmtree(notebooks / "work", ignore_errors=True)  # a clean run: 01 prepares the data

# The kernel is this interpreter (the venv's), whatever kernels the machine has.
jupyter = Path(tempfile.mkdtemp(prefix="convlab-kernel-"))
(jupyter / "kernels" / "convlab").mkdir(parents=True)
(jupyter / "kernels" / "convlab" / "kernel.json").write_text(json.dumps({
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3 (convlab)", "language": "python"}))
os.environ["JUPYTER_PATH"] = str(jupyter)

# Longest first, so that a path inside the notebooks folder becomes relative to it.
replacements = [(str(notebooks) + os.sep, ""), (str(notebooks.parent) + os.sep, "../"),
                (str(notebooks.parent.parent / "shared") + os.sep, "../../shared/"),
                (str(Path.home()) + os.sep, "~/")]
absolute = re.compile(r"(?<![\w.~])/(?:work|root|tmp|home|Users|private|var|mnt|opt)/\S*")


def clean(text: str) -> str:
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def strip(nb) -> list[str]:
    """Drop papermill's paths and this machine's paths; returns the absolute paths left."""
    for key in ("input_path", "output_path"):
        nb.metadata.get("papermill", {}).pop(key, None)
    left = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = clean(out["text"])
                left += absolute.findall(out["text"])
            for key in ("text/plain", "text/html"):
                if key in out.get("data", {}):
                    out["data"][key] = clean(out["data"][key])
                    left += absolute.findall(out["data"][key])
            if "traceback" in out:
                out["traceback"] = [clean(line) for line in out["traceback"]]
    return left


times = {}
for name in names:
    path = notebooks / name
    tmp = jupyter / path.name  # outside the checkout: a half-run copy is never picked up
    started = time.time()
    print(f"== {name}", flush=True)
    try:
        papermill.execute_notebook(str(path), str(tmp), kernel_name="convlab",
                                   progress_bar=False, stdout_file=sys.stdout,
                                   stderr_file=sys.stderr,
                                   resources={"metadata": {"path": str(notebooks)}})
        nb = nbformat.read(tmp, as_version=4)
    finally:
        tmp.unlink(missing_ok=True)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    left = strip(nb)
    if left:
        sys.exit(f"{name}: absolute paths left in the outputs, not written: {sorted(set(left))[:10]}")
    nbformat.write(nb, path)
    times[name] = time.time() - started
    print(f"== {name}: {times[name] / 60:.1f} min", flush=True)
shutil.rmtree(jupyter, ignore_errors=True)
for name, seconds in times.items():
    print(f"{name:32} {seconds / 60:5.1f} min")
print(f"{'all':32} {sum(times.values()) / 60:5.1f} min")
EOF
