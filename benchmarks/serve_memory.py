"""`convlab serve` under a burst of large uploads: the server's memory, idle, at its peak and
after each burst.

Starts `convlab serve RUN` on a loopback port, sends 16 concurrent uploads of 7000 x 7000
1-bit PNGs (each ~60 KB on the wire, 49 megapixels decoded: under the 50-megapixel cap),
twice, and reads the server's RSS and its high-water mark (VmHWM) from /proc. Any trained
run does (the images are shrunk to the run's size before the model sees them), e.g. a tiny
one: `convlab train squeezenet --data PREPARED --image-size 32 --epochs 1`.

    python benchmarks/serve_memory.py RUN [--port 8765] [--uploads 16]
"""

from __future__ import annotations

import argparse
import io
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def big_png(seed: int, side: int = 7000) -> bytes:
    """A 1-bit PNG of `side` x `side` with a few ellipses: small on the wire, large decoded."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("1", (side, side))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.randrange(side - 800), rng.randrange(side - 800)
        draw.ellipse((x, y, x + rng.randrange(200, 800), y + rng.randrange(200, 800)), fill=1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def memory_mb(pid: int) -> dict[str, int]:
    """{"VmRSS", "VmHWM"} of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        return {key: int(value.split()[0]) // 1024 for key, value in
                (line.split(":", 1) for line in f) if key in ("VmRSS", "VmHWM")}


def _post(url: str, data: bytes, statuses: list[int]) -> None:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/predict", data=data),
                                    timeout=300) as r:
            statuses.append(r.status)
    except urllib.error.HTTPError as err:
        statuses.append(err.code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--uploads", type=int, default=16)
    args = parser.parse_args()
    uploads = [big_png(i) for i in range(args.uploads)]
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "convlab", "serve", args.run, "--port",
                               str(args.port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(2)
        print(f"idle: {memory_mb(server.pid)['VmRSS']} MB")
        for burst in (1, 2):
            statuses: list[int] = []
            threads = [threading.Thread(target=_post, args=(url, d, statuses)) for d in uploads]
            started = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.time() - started
            time.sleep(3)
            now = memory_mb(server.pid)
            print(f"burst {burst}: {len(uploads)} uploads in {seconds:.1f} s, statuses "
                  f"{sorted(set(statuses))}; peak so far {now['VmHWM']} MB, 3 s after "
                  f"{now['VmRSS']} MB")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
