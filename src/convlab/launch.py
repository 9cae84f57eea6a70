"""`convlab launch --workers N -- train ...`: a multi-worker job on this machine.

Starts N `convlab` processes, each with its own TF_CONFIG (a loopback cluster on free ports),
so MultiWorkerMirroredStrategy trains one model across them exactly as it would across
machines. Worker 0 is the chief: its output is shown; the others' goes to log files. When a
worker fails, the others are stopped and the failure is reported with its log; when it was
lost (killed, or cut off from the others), the job resumes from the chief's last checkpoint,
a bounded number of times. When all succeed, their final weights are compared.

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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from convlab.errors import ConvlabError, check_at_least
from convlab.runs import last_checkpoint, read_record
from convlab.training.distributed import LOST_CONTACT, REPORT_ENV

STOP_GRACE_SECONDS = 10
DEFAULT_RETRIES = 2  # resumes after lost workers; each must checkpoint another epoch


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
           logs: str | os.PathLike | None = None, force: bool = False,
           retries: int = DEFAULT_RETRIES) -> int:
    """Run `convlab <command>` as a `workers`-process multi-worker job; returns its exit code.

    A job that loses a worker (one killed by a signal, or one that lost contact with another)
    after checkpointing an epoch is resumed from that checkpoint, up to `retries` times, as
    long as each try checkpoints at least one more epoch.

    Raises:
        ConvlabError: bad arguments, a worker that failed (the others are stopped) and was
            not resumed, or workers that ended with different weights.
    """
    command = _check_request(workers, command, force, retries)
    keep = logs is not None
    logdir = Path(logs) if keep else Path(tempfile.mkdtemp(prefix="convlab-launch-"))
    logdir.mkdir(parents=True, exist_ok=True)
    quiet = ["--quiet"] if "--quiet" in command else []
    run, before, retry = None, 0, 0
    while (failed := _attempt(workers, command, host, logdir, retry)) is not None:
        run = _report(logdir, 0).get("run") or run
        done, total = _progress(run)
        refusal = _refusal(failed, done, before, total, retry, retries)
        detail = f"\n{_tail(failed.log)}" if failed.worker else ""
        stopped = f"launch: worker {failed.worker} {failed.reason}; stopped the other worker(s)"
        if refusal is None:
            retry, before = retry + 1, done
            print(f"{stopped}; resuming {run} after epoch {done} (retry {retry} of "
                  f"{retries}){detail}", file=sys.stderr, flush=True)
            command = ["train", "--resume", str(run), *quiet]
            continue
        print(f"{stopped}.{detail}", file=sys.stderr)
        why = f" (not resumed by itself: {refusal})" if failed.lost else ""
        raise ConvlabError(f"worker {failed.worker} {failed.reason}, so the job was stopped"
                           f"{why}; logs: {logdir}; continue with: "
                           f"{_resume_hint(workers, run, done, total)}")
    _check_agreement(logdir, workers)
    if not keep:
        shutil.rmtree(logdir, ignore_errors=True)
    return 0


def _check_request(workers: int, command: list[str], force: bool, retries: int) -> list[str]:
    """The `train ...` command every worker runs (without a leading `--`).

    Raises:
        ConvlabError: a bad number of workers or retries, or not a `train` command.
    """
    check_at_least("workers", workers, 1)
    check_at_least("retries", retries, 0)
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
    return command


@dataclass(frozen=True)
class _Failure:
    worker: int
    code: int  # the exit status; negative: killed by that signal
    log: Path  # its log (the chief's: its stderr)
    lost: bool  # killed by a signal, or it lost contact with another worker

    @property
    def reason(self) -> str:
        return _exit_reason(self.code)


def _attempt(workers: int, command: list[str], host: str, logdir: Path,
             retry: int) -> _Failure | None:
    """Start the workers and wait until all exit 0 (None) or one fails (the others are then
    stopped). The chief's stdout is shown here and its stderr too, also copied to its log,
    where `convlab launch` reads why it failed; the others' output goes to their logs. A
    retry's output is appended to the same logs."""
    cluster = [f"{host}:{port}" for port in free_ports(workers, host)]
    if not retry:
        print(f"launch: {workers} workers on {', '.join(cluster)}; worker 0 is the chief "
              f"(shown here); logs of the others: {logdir}", flush=True)
    logs = [logdir / f"worker-{i}.log" for i in range(workers)]
    procs, files, starts, chief_err = [], [], [], None
    try:
        for i in range(workers):
            (logdir / f"worker-{i}.json").unlink(missing_ok=True)
            files.append(open(logs[i], "a" if retry else "w", encoding="utf-8",  # noqa: SIM115
                              errors="replace"))
            if retry:
                files[i].write(f"--- launch: retry {retry} ---\n")
                files[i].flush()
            starts.append(files[i].tell())
            env = {**os.environ, "TF_CONFIG": tf_config(cluster, i),
                   REPORT_ENV: str(logdir / f"worker-{i}.json")}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "convlab", *command], env=env,
                stdout=None if i == 0 else files[i],
                stderr=subprocess.PIPE if i == 0 else files[i], encoding="utf-8",
                errors="replace"))
            if i == 0:
                chief_err = _tee(procs[0].stderr, files[0])
        failed = _wait(procs)
        if failed is not None:
            _stop(procs)
    except BaseException:  # Ctrl-C included: no worker outlives the launcher
        _stop(procs)
        raise
    finally:
        if chief_err is not None:
            chief_err.join(STOP_GRACE_SECONDS)
        for f in files:
            f.close()
    if failed is None:
        return None
    i, code = failed
    return _Failure(i, code, logs[i], code < 0 or _said(logs[i], starts[i], LOST_CONTACT))


def _tee(stream, log) -> threading.Thread:
    """Copy `stream` (a worker's stderr) to this process's stderr and to `log`, line by line."""
    def copy():
        for line in stream:
            sys.stderr.write(line)
            sys.stderr.flush()
            log.write(line)
            log.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def _said(log: Path, start: int, words: str) -> bool:
    """Whether `log` has `words` after offset `start` (this attempt's part of it)."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            return words.encode() in f.read()
    except OSError:
        return False


def _progress(run: str | None) -> tuple[int | None, int | None]:
    """(epochs the chief's run folder has checkpointed, epochs it trains in all); None for
    what is not known (no run folder yet, no epoch finished, a damaged config)."""
    if run is None:
        return None, None
    done = last_checkpoint(run)
    try:
        total = read_record(run).config.total_epochs
    except ConvlabError:
        total = None
    return (done[0] if done else None), total


def _refusal(failed: _Failure, done: int | None, before: int, total: int | None, retry: int,
             retries: int) -> str | None:
    """Why the job is not resumed by itself after `failed`, or None to resume it: only a lost
    worker, a bounded number of times, and only when the try that failed checkpointed an
    epoch (so a failure that recurs before the next checkpoint stops the job)."""
    if not failed.lost:
        return "not a lost worker"
    if retry >= retries:
        return f"--retries {retries}" if not retries else f"retried {retries} time(s) already"
    if done is None or done <= before:
        return "no epoch was checkpointed since the " + ("start" if not retry else "last retry")
    if total is not None and done >= total:
        return f"all {total} epochs had been checkpointed"
    return None


def _resume_hint(workers: int, run: str | None, done: int | None, total: int | None) -> str:
    if run is None:
        return "the same command (no epoch had finished)"
    if done is not None and total is not None and done >= total:
        return f"nothing to resume: all {total} epochs are checkpointed in {run}"
    return f"convlab launch --workers {workers} -- train --resume {run}"


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
