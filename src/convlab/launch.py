"""`convlab launch --workers N -- train ...`: a multi-worker job on this machine.

Starts N `convlab` processes, each with its own TF_CONFIG (a loopback cluster on free ports),
so MultiWorkerMirroredStrategy trains one model across them exactly as it would across
machines. Worker 0 is the chief: its output is shown; the others' goes to log files. When a
worker fails, the others are stopped and the failure is reported with its log. When all
succeed, their final weights are compared.

Real clusters need no launcher: set TF_CONFIG on each machine and run `convlab train` there
(see docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convlab.errors import ConvlabError
from convlab.training.distributed import REPORT_ENV

STOP_GRACE_SECONDS = 10


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports nothing listens on now (the OS picks them; the workers bind them soon after)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(cluster: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker",
                                                                 "index": index}})


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + STOP_GRACE_SECONDS
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in text[-lines:])


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch(workers: int, command: list[str], *, host: str = "127.0.0.1",
           logs: str | os.PathLike | None = None, force: bool = False) -> int:
    """Run `convlab <command>` as a `workers`-process multi-worker job; returns its exit code.

    Raises:
        ConvlabError: bad arguments, a worker that failed (the others are stopped), or
            workers that ended with different weights.
    """
    if workers < 1:
        raise ConvlabError(f"--workers must be at least 1, received: {workers}")
    cores = os.cpu_count() or 1
    if workers > max(2, cores) and not force:
        raise ConvlabError(f"--workers {workers} on a machine with {cores} CPU core(s) would "
                           f"start {workers} TensorFlow processes that fight over them; use at "
                           f"most {max(2, cores)}, or add --force")
    if command[:1] == ["--"]:
        command = command[1:]
    if command[:1] != ["train"]:
        raise ConvlabError(f"launch runs `convlab train ...` on every worker; received: "
                           f"{' '.join(command) or 'nothing'} (write: convlab launch "
                           f"--workers {workers} -- train RECIPE --data DIR)")
    keep = logs is not None
    logdir = Path(logs) if keep else Path(tempfile.mkdtemp(prefix="convlab-launch-"))
    logdir.mkdir(parents=True, exist_ok=True)
    cluster = [f"{host}:{port}" for port in free_ports(workers, host)]
    print(f"launch: {workers} workers on {', '.join(cluster)}; worker 0 is the chief (shown "
          f"here); logs of the others: {logdir}", flush=True)
    procs, log_files = [], []
    try:
        for i in range(workers):
            env = {**os.environ, "TF_CONFIG": tf_config(cluster, i),
                   REPORT_ENV: str(logdir / f"worker-{i}.json")}
            out = None
            if i:
                out = open(logdir / f"worker-{i}.log", "w")  # noqa: SIM115
                log_files.append(out)
            procs.append(subprocess.Popen([sys.executable, "-m", "convlab", *command],
                                          env=env, stdout=out, stderr=out))
        failed = _wait(procs)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        for f in log_files:
            f.close()
    if failed is not None:
        i, code = failed
        _stop(procs)
        run = _report(logdir, 0).get("run")
        log = logdir / f"worker-{i}.log"
        detail = f"\n{_tail(log)}" if i else ""
        print(f"launch: worker {i} {_exit_reason(code)}; stopped the other worker(s)."
              f"{detail}", file=sys.stderr)
        resume = (f"convlab launch --workers {workers} -- train --resume {run}" if run else
                  "the same command (no epoch had finished)")
        raise ConvlabError(f"worker {i} {_exit_reason(code)}, so the job was stopped; "
                           f"logs: {logdir}; continue with: {resume}")
    _check_agreement(logdir, workers)
    if not keep:
        shutil.rmtree(logdir, ignore_errors=True)
    return 0


def _wait(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Until all exit 0 (None) or one fails: (worker index, exit code)."""
    while True:
        running = False
        for i, p in enumerate(procs):
            code = p.poll()
            if code is None:
                running = True
            elif code != 0:
                return i, code
        if not running:
            return None
        time.sleep(0.2)


def _report(logdir: Path, i: int) -> dict:
    path = logdir / f"worker-{i}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _check_agreement(logdir: Path, workers: int) -> None:
    reports = [_report(logdir, i) for i in range(workers)]
    digests = {r.get("weights_sha256") for r in reports}
    if None in digests:
        missing = [i for i, r in enumerate(reports) if "weights_sha256" not in r]
        raise ConvlabError(f"worker(s) {missing} ended without reporting their weights; "
                           f"see the logs in {logdir}")
    if len(digests) > 1:
        first = reports[0].get("variables", {})
        differ = sorted({name for r in reports[1:] for name, d in r.get("variables", {}).items()
                         if first.get(name) != d})
        raise ConvlabError(f"the workers ended with different weights in {len(differ)} "
                           f"variable(s), e.g. {', '.join(differ[:3])}; see {logdir}")
    examples = reports[0].get("examples_per_epoch")
    print(f"launch: all {workers} workers finished with identical weights (sha256 "
          f"{reports[0]['weights_sha256'][:16]}...); examples trained on per epoch, all "
          f"workers together: {examples}; run folder: {reports[0].get('run')}")
