"""`convlab serve`: the real server on a loopback port, its JSON API, and its page driven in
headless Chromium (Debian's package, through Playwright); Grad-CAM against gradient-taped
Grad-CAM."""

import base64
import io
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from convlab.config import TrainConfig
from convlab.errors import ConvlabError
from convlab.evaluation.gradcam import HeatMaps, normalise, overlay
from convlab.inference import predict
from convlab.runs import load_run_model
from convlab.workflow import train

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("gradio")

TINY = {"model": "squeezenet", "image_size": 32, "batch_size": 8, "epochs": 1,
        "model_options": {"layout": [[8, 16], "pool", [8, 16]]}}


@pytest.fixture(scope="module")
def run(tiny_prepared):
    data = tiny_prepared(size=32, photo_size=48, shards=2)
    return train(TrainConfig(), data=str(data), precision="float32",
                 runs_dir=str(data.parent / "runs"), progress=False, **TINY)


@pytest.fixture(scope="module")
def photo(run) -> Path:
    """A real flower photo when ../shared has them (a synthetic one otherwise)."""
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "flower_photos" / "rose"
    if real.is_dir():
        return sorted(real.glob("*.jpg"))[0]
    return sorted((Path(run).parents[1] / "src").rglob("*.jpg"))[0]


@pytest.fixture(scope="module")
def server(run):
    """The app under uvicorn in a thread, on a free loopback port: its base URL."""
    from convlab.webapp import create_app

    app = create_app(run, max_bytes=2**20, max_pixels=4_000_000)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def _post(url: str, data, headers: dict | None = None, **request) -> tuple[int, dict]:
    """(status, JSON answer) of a request; `request`: urllib's (method=)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}, **request),
                                    timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _form(*files: tuple[str, bytes], text: dict | None = None) -> tuple[bytes, dict]:
    """A multipart/form-data body as `curl -F file=@NAME` sends it (file parts, then text
    fields), and its Content-Type header."""
    parts = [b'Content-Disposition: form-data; name="file"; filename="' + name.encode()
             + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + data
             for name, data in files]
    parts += [f'Content-Disposition: form-data; name="{k}"\r\n\r\n{v}'.encode()
              for k, v in (text or {}).items()]
    body = b"".join(b"--cl-boundary\r\n" + part + b"\r\n" for part in parts)
    return body + b"--cl-boundary--\r\n", {
        "Content-Type": "multipart/form-data; boundary=cl-boundary"}


def _bomb() -> bytes:
    """A 12,000 x 12,000 PNG of one colour: ~140 kB on the wire, 432 MB decoded."""
    buffer = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_api_top_k_matches_predict_and_heat_map(server, run, photo):
    status, body = _post(f"{server}/predict?top_k=2&heatmap=1", photo.read_bytes())
    assert status == 200
    rows, _ = predict(run, [photo], top_k=2)
    assert [p["class"] for p in body["predictions"]] == \
           [p["class"] for p in rows[0]["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in body["predictions"]],
                               [p["probability"] for p in rows[0]["predictions"]], atol=1e-5)
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heat.size == (32, 32) and heat.mode == "RGB"
    with urllib.request.urlopen(f"{server}/api/run") as r:
        info = json.loads(r.read())
    assert info["classes"] == ["circle", "square", "triangle"] and info["heat_maps"]


def test_api_turns_phone_photos_upright(server, photo):
    """A photo stored sideways with an EXIF orientation tag (as phones write them) gets the
    upright photo's answer."""
    upright = Image.open(photo).convert("RGB")
    sideways = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, format="JPEG", quality=95,
                                                      exif=exif)
    plain = io.BytesIO()
    upright.save(plain, format="JPEG", quality=95)
    _, want = _post(f"{server}/predict", plain.getvalue())
    _, got = _post(f"{server}/predict", sideways.getvalue())
    assert [p["class"] for p in got["predictions"]] == [p["class"] for p in want["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                               [p["probability"] for p in want["predictions"]], atol=0.02)


def test_api_bad_uploads_get_4xx_and_the_server_keeps_serving(server, photo):
    cases = [(b"", 400, "empty"), (b"GIF89a this is no image", 415, "not an image"),
             (b"%PDF-1.4 not a photo", 415, "not an image"),
             (photo.read_bytes()[:len(photo.read_bytes()) // 2], 400, "broken"), (_bomb(), 413, "pixel limit"),
             (b"\xff" * (2**20 + 1), 413, "MB limit")]
    for data, status, words in cases:
        got, body = _post(f"{server}/predict", data)
        assert got == status and words in body["error"], (words, got, body)
        assert "\n" not in body["error"]
    got, body = _post(f"{server}/predict?top_k=0", photo.read_bytes())
    assert got == 422 and "top_k" in body["error"]
    got, body = _post(f"{server}/predict", photo.read_bytes())  # still up, still right
    assert got == 200 and len(body["predictions"]) == 3


def test_concurrent_clients_all_answered(server, photo):
    data, results = photo.read_bytes(), []

    def client():
        for _ in range(5):
            results.append(_post(f"{server}/predict", data))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 30 and all(s == 200 for s, _ in results)
    assert len({r["predictions"][0]["class"] for _, r in results}) == 1


def test_api_answers_bad_queries_and_requests_with_one_line_errors(server, photo):
    """Every bad query value, wrong method or path, and form upload: `{"error": one line}`
    naming what was wrong, never FastAPI's `{"detail": [...]}`."""
    data = photo.read_bytes()
    cases = [("top_k=abc", "top_k", "'abc'"), ("heatmap=abc", "heatmap", "'abc'"),
             ("top_k=0", "top_k", "'0'"), ("top_k=-1", "top_k", "'-1'"),
             ("top_k=1e9", "top_k", "'1e9'"), ("heatmap=2", "heatmap", "'2'"),
             ("top_k=%C3%A9", "top_k", "'\u00e9'"), ("top_k=%00", "top_k", r"'\x00'"),
             ("top_k=", "top_k", "''"), ("top_k=1&heatmap=zz", "heatmap", "'zz'")]
    for query, name, shown in cases:
        got, body = _post(f"{server}/predict?{query}", data)
        assert (got, list(body)) == (422, ["error"]), (query, got, body)
        assert name in body["error"] and f"received: {shown}" in body["error"], body
    others = [(f"{server}/predict", None, {"method": "GET"}, 405, "POST"),
              (f"{server}/api/nope", None, {}, 404, "/api/openapi.json"),
              (f"{server}/predict", b"--x\r\n", {"headers": {
                  "Content-Type": "multipart/form-data; boundary=x"}}, 400, "curl -F")]
    for url, body_sent, request, status, words in others:
        got, body = _post(url, body_sent, **request)
        assert (got, list(body)) == (status, ["error"]) and words in body["error"], body
        assert "\n" not in body["error"]
    got, body = _post(f"{server}/predict?top_k=1000000&heatmap=yes", data)  # as many as exist
    assert got == 200 and len(body["predictions"]) == 3 and body["heatmap_png"]


def test_api_takes_forms_of_one_or_several_files(server, photo):
    """`curl -F file=@a.jpg -F file=@b.jpg`: one entry per file, in order, named as the client
    named it; a bad file (not an image, over --max-mb) gets its own error, the others their
    answer, equal to the answer to the photo's bytes alone."""
    data = photo.read_bytes()
    _, alone = _post(f"{server}/predict?top_k=2", data)
    status, body = _post(f"{server}/predict?top_k=2", *_form(("rose.jpg", data)))
    assert status == 200 and list(body) == ["results"] and len(body["results"]) == 1
    assert body["results"][0]["file"] == "rose.jpg"
    assert body["results"][0]["predictions"] == alone["predictions"]
    named = "<b>ros\u00e9</b>.jpg"  # user text: answered as given, JSON-escaped
    status, body = _post(f"{server}/predict?top_k=2&heatmap=1", *_form(
        ("notes.jpg", b"not a photo"), (named, data), ("big.png", b"\xff" * (2**20 + 1))))
    assert status == 200 and [r["file"] for r in body["results"]] == ["notes.jpg", named,
                                                                      "big.png"]
    bad, good, big = body["results"]
    assert bad["status"] == 415 and "notes.jpg is not an image" in bad["error"]
    assert "predictions" not in bad and "error" not in good
    assert big["status"] == 413 and "MB limit" in big["error"]
    assert good["predictions"] == alone["predictions"] and good["heatmap_png"]
    assert {"model_file", "run", "milliseconds", "none_of_the_classes"} <= set(good)


def test_api_refuses_forms_over_the_limits_and_bodies_it_cannot_read(server, photo):
    """A form without a file, over --max-batch files or over the bytes a request may send
    (declared or counted as it arrives), a body that is neither an image nor a form: one-line
    errors naming what to send. A photo's bytes count whatever their content type."""
    data = photo.read_bytes()
    many = _form(*[(f"{i}.jpg", b"x") for i in range(17)])  # the server's --max-batch is 16
    huge = _form(*[(f"{i}.jpg", b"\xff" * 3 * 2**19) for i in range(12)])  # 18 > 16 x 1 MB

    def chunked():  # no Content-Length: the server counts what arrives
        yield from (huge[0][i:i + 2**20] for i in range(0, len(huge[0]), 2**20))

    cases = [(*_form(text={"note": "a rose"}), 400, "no file field; send e.g. curl -F"),
             (*many, 413, "more than 16 files"), (*huge, 413, "MB a request may send"),
             (chunked(), huge[1], 413, "MB a request may send"),
             (b'{"image": "rose.jpg"}', {"Content-Type": "application/json"}, 415,
              "multipart/form-data"),
             (b"a rose", {"Content-Type": "text/plain"}, 415, "image/*")]
    for sent, headers, status, words in cases:
        got, body = _post(f"{server}/predict", sent, headers=headers)
        assert (got, list(body)) == (status, ["error"]) and words in body["error"], body
        assert "\n" not in body["error"]
    got, body = _post(f"{server}/predict", b"GIF89a no image", headers={
        "Content-Type": "image/gif"})  # labelled an image: the decoder's word alone
    assert got == 415 and "not an image" in body["error"] and "multipart" not in body["error"]
    for media in ("application/json", "application/octet-stream", "image/jpeg"):
        got, body = _post(f"{server}/predict", data, headers={"Content-Type": media})
        assert got == 200 and len(body["predictions"]) == 3, (media, body)


def test_api_has_no_page_from_a_cdn_and_serves_its_schema(server):
    """The server may be offline: swagger-ui's docs page (from a CDN) is gone, the schema
    stays; the Gradio page's own scripts and styles come from the server itself."""
    for path in ("/api/docs", "/api/redoc", "/docs", "/redoc"):
        try:
            with urllib.request.urlopen(f"{server}{path}", timeout=30) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as err:
            text = err.read().decode()
        assert "cdn" not in text and "swagger" not in text.lower(), (path, text[:300])
    with urllib.request.urlopen(f"{server}/api/openapi.json", timeout=30) as r:
        schema = json.loads(r.read())
    assert {"/predict", "/api/run"} <= set(schema["paths"])
    predict_doc = schema["paths"]["/predict"]["post"]
    assert {"image/*", "application/octet-stream", "multipart/form-data"} <= set(
        predict_doc["requestBody"]["content"]) and '"results"' in predict_doc["description"]
    with urllib.request.urlopen(server, timeout=30) as r:
        page = r.read().decode()
    loaded = re.findall(r"""<(?:script|link|img)[^>]*(?:src|href)=["']([^"']+)""", page)
    assert loaded and not [u for u in loaded if re.match(r"(https?:)?//", u)], loaded


def test_upload_hang_ups_log_one_line_each(server):
    """Clients that send part of their body and close (on the API, raw or a form, and on the
    page's upload route): one log line each, no traceback."""
    import logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.extend(logging.Formatter().format(record).splitlines())

    port = int(server.rsplit(":", 1)[1])
    form = (b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG")
    starts = [b"POST /predict HTTP/1.1\r\nContent-Length: 100000\r\n\r\n\x89PNG"] * 3 + [
        b"POST %s HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        b"Content-Length: 100000\r\n\r\n%s" % (path, form)
        for path in (b"/predict", b"/gradio_api/upload")]
    handler = Keep()
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in starts]
        for client, start in zip(clients, starts, strict=True):
            client.sendall(start.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nHost: x\r\n")
                           + b"\0" * 5000)
        time.sleep(0.3)
        for client in clients:
            client.close()
        deadline = time.time() + 10
        while len(lines) < len(starts) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything more (a traceback's lines) would arrive now
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert not any("Traceback" in line for line in lines), lines[:5]
    assert len(lines) == len(starts) and all("hung up" in line for line in lines), lines
    status, _ = _post(f"{server}/predict", b"")  # still serving
    assert status == 400


def test_decodes_in_flight_stay_within_the_limit(server, photo, monkeypatch):
    """A burst of uploads decodes at most MAX_DECODES at a time (a 50-megapixel PNG takes
    ~250 MB while it decodes)."""
    import convlab.inference
    from convlab.webapp import MAX_DECODES

    decode, lock, in_flight, most = convlab.inference.decode_bytes, threading.Lock(), [0], [0]

    def slow_decode(data, info):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.3)
            return decode(data, info)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(convlab.inference, "decode_bytes", slow_decode)
    data, results = photo.read_bytes(), []
    threads = [threading.Thread(target=lambda: results.append(_post(f"{server}/predict", data)))
               for _ in range(3 * MAX_DECODES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [s for s, _ in results] == [200] * len(threads)
    assert most[0] == MAX_DECODES


@pytest.mark.parametrize("flag, value, shown", [
    ("--max-mb", "nan", "nan"), ("--max-mb", "inf", "inf"), ("--max-mb", "0", "0.0"),
    ("--max-megapixels", "nan", "nan"), ("--max-megapixels", "1e400", "inf"),
    ("--max-batch", "0", "0"), ("--port", "0", "0"), ("--port", "70000", "70000")])
def test_cli_serve_numbers_out_of_range_are_one_line_errors(run, flag, value, shown, capsys,
                                                            monkeypatch):
    import convlab.webapp
    from convlab.cli.main import main

    def never(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(convlab.webapp, "serve", never)
    assert main(["serve", str(run), flag, value]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convlab:"), err
    assert f"{flag} must be a number between" in err[0] and err[0].endswith(f"received: {shown}")


def test_page_in_chromium_classifies_a_photo_offline(server, browser, run, photo, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server, wait_until="networkidle")
    upload = page.inner_text("#cl-upload")  # several files: not Gradio's "Drop File Here"
    assert "Drop photos here" in upload and "Drop File Here" not in upload, upload
    page.set_input_files("#cl-upload input[type=file]", str(photo))
    card = page.wait_for_selector("#cl-results .cl-card", timeout=60_000)
    assert [c.inner_text() for c in card.query_selector_all("figcaption")] == [
        "what the model saw (32 px)", "where it looked (Grad-CAM)"]
    rows, _ = predict(run, [photo], top_k=1)  # the page says what predict says
    assert card.get_attribute("data-top") == ("none of the classes" if rows[0][
        "none_of_the_classes"] else rows[0]["predictions"][0]["class"])
    heat = page.query_selector("#cl-results img.cl-heat")
    assert heat is not None and heat.get_attribute("src").startswith("data:image/jpeg;base64,")
    assert len(page.query_selector_all("#cl-results .cl-card .cl-row")) == 3
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)

    # A file that is no image: a clear message on the page, and the page still works.
    notes = tmp_path / "holiday.jpg"
    notes.write_text("not a photo, despite the name")
    page.set_input_files("#cl-upload input[type=file]", [str(notes), str(photo)])
    page.wait_for_selector("#cl-results .cl-error", timeout=60_000)
    assert "holiday.jpg is not an image" in page.inner_text("#cl-results .cl-error")
    assert page.query_selector("#cl-results .cl-card") is not None

    # The gallery of validation photos: click one, see its classes.
    page.get_by_role("tab", name="Validation photos").click()
    page.locator("#cl-gallery .thumbnail-item").first.click()
    picked = page.wait_for_selector("#cl-picked .cl-card", timeout=60_000)
    assert "labelled" in picked.inner_text()
    page.get_by_role("tab", name="The run").click()
    page.wait_for_selector("text=Confusion matrix", timeout=30_000)
    # The training table: one named row each, no (empty) header row.
    heads = page.locator("#cl-training table th").all_inner_texts()
    assert heads[:2] == ["recipe", "model"] and all(h.strip() for h in heads), heads
    assert page.locator("#cl-training thead").count() == 0
    outside = [u for u in requested
               if not u.startswith((server, "data:", "blob:", "about:"))]
    assert outside == [], f"the page asked the internet for {outside[:3]}"
    page.close()


def test_grad_cam_equals_gradient_taped_grad_cam(run):
    model, _ = load_run_model(run)
    x = tf.random.uniform((2, 32, 32, 3), seed=1)
    probs, maps = HeatMaps(model)(x.numpy(), classes=[0, 2])
    np.testing.assert_allclose(probs, model.predict_on_batch(x), atol=1e-6)
    # Grad-CAM as published: d(class score)/d(feature map), averaged over positions.
    pool, head = model.get_layer("avg_pool"), model.get_layer("predictions")
    features_model = keras.Model(model.inputs, pool.input)
    kernel, bias = head.get_weights()
    with tf.GradientTape() as tape:
        features = features_model(x)
        tape.watch(features)
        logits = tf.reduce_mean(features, axis=(1, 2)) @ kernel + bias
        score = logits[0, 0] + logits[1, 2]  # each image's own class
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    taped = normalise(tf.reduce_sum(weights * features, axis=-1).numpy())
    np.testing.assert_allclose(maps, taped, atol=1e-5)
    assert maps.shape[0] == 2 and maps.min() >= 0 and maps.max() <= 1
    shown = overlay(np.zeros((32, 32, 3), np.uint8), maps[0])
    assert shown.shape == (32, 32, 3) and shown.dtype == np.uint8


def test_heat_maps_need_a_feature_map():
    inputs = keras.Input((8, 8, 3))
    dense = keras.Model(inputs, keras.layers.Dense(2, name="predictions")(
        keras.layers.Flatten()(inputs)), name="dense_baseline")
    with pytest.raises(ConvlabError, match="no pooled convolutional feature map"):
        HeatMaps(dense)
