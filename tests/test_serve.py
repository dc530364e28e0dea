"""`pixelforge serve`: the web page driven in a real headless browser (Debian's chromium through Playwright), and
the server's limits checked over HTTP. Skipped with the reason when the ui extra, Playwright or chromium is absent.
"""
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import DATA

pytest.importorskip("starlette", reason="the web page needs the ui extra: pip install -e '.[ui]'")
uvicorn = pytest.importorskip("uvicorn", reason="the web page needs the ui extra: pip install -e '.[ui]'")

import pixelforge  # noqa: E402
from pixelforge.cli import build_parser, main  # noqa: E402
from pixelforge.data.image_io import read_image  # noqa: E402
from pixelforge.serve.app import Settings, create_app  # noqa: E402
from pixelforge.serve.catalog import readme_scores  # noqa: E402
from pixelforge.zoo import save_weights  # noqa: E402

CHROMIUM = os.environ.get("PIXELFORGE_CHROMIUM", "/usr/bin/chromium")
LR = DATA / "sr-bench" / "Set5" / "x4" / "img_001_SRF_4_LR.png"  # 128x128
# a small VAR and tokenizer with random weights: the page's path, not the quality
SMALL_VAR = {"depth": 1, "embed_dim": 64, "num_heads": 2, "patch_nums": [1, 2, 4, 8], "vocab_size": 64}


def test_readme_scores_tables_and_prose():
    text = ("| file | config | Set5 Y-PSNR / SSIM | wall time |\n|---|---|---|---|\n| `a_x4.safetensors` | c.yaml | "
            "30.43 / 0.8626 | 108 min |\n\n## Classifier\n\n`b.safetensors` (trained here). Top-1 / top-5 on the\n"
            "test images: **80.98 % / 98.77 %** (curve...).\n")
    assert readme_scores(text) == {"a_x4.safetensors": ["Set5 Y-PSNR / SSIM: 30.43 / 0.8626"],
                                   "b.safetensors": ["Top-1 / top-5 on the test images: 80.98 % / 98.77 %"]}


def test_serve_command_line(tmp_path, capsys):
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)  # this machine only, by default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--weights", f"cfsr_x4={tmp_path / 'missing.pth'}"])
    assert "expected MODEL=PATH with an existing file" in capsys.readouterr().err
    (tmp_path / "w.pth").write_bytes(b"")
    assert main(["serve", "--weights", f"no_such_model={tmp_path / 'w.pth'}"]) == 1
    assert "unknown model in --weights: no_such_model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free local port, in a thread of this process (the CLI reference runs with the same threads)."""
    home = tmp_path_factory.mktemp("home")
    old_home = os.environ.get("PIXELFORGE_HOME")
    os.environ["PIXELFORGE_HOME"] = str(home)  # no precision cache or weights from the user's home
    app = create_app(Settings(max_upload_bytes=16 * 2 ** 20, device="cpu"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.server
    srv.should_exit = True
    thread.join(30)
    if old_home is None:
        os.environ.pop("PIXELFORGE_HOME")
    else:
        os.environ["PIXELFORGE_HOME"] = old_home


def _request(url, method="GET", data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_server_limits(server):
    """Upload size limit, files only by id of the visit, foreign Host headers refused, the folder removed."""
    base, state = server
    status, body = _request(f"{base}/api/visit", "POST")
    token = json.loads(body)["visit"]
    folder = state.visits[token].dir
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    conn.putrequest("PUT", f"/api/v/{token}/upload?name=big.png")
    conn.putheader("Content-Length", str(16 * 2 ** 20 + 1))
    conn.endheaders()  # refused from the header, before any byte of the body
    response = conn.getresponse()
    assert response.status == 413 and "upload limit of 16 MB" in json.loads(response.read())["error"]
    conn.close()
    status, body = _request(f"{base}/api/v/{token}/upload?name=big.png", "PUT", iter([b"x" * 2 ** 20] * 16 + [b"x"]))
    assert status == 413 and "upload limit of 16 MB" in json.loads(body)["error"]  # chunked: counted while streamed
    assert not list((folder / "uploads").iterdir())  # the partial upload is gone
    status, body = _request(f"{base}/api/v/{token}/upload?name=../../etc/passwd", "PUT", b"abc")
    fid = json.loads(body)["id"]
    assert [p.name for p in (folder / "uploads").iterdir()] == [f"{fid}-passwd"]  # stays in the visit folder
    assert _request(f"{base}/api/v/{token}/files/{fid}/passwd")[0] == 404  # uploads are never served back
    assert _request(f"{base}/api/v/{token}/files/..%2F..%2Fetc%2Fpasswd/x")[0] == 404
    assert _request(f"{base}/api/v/not-a-visit/jobs/x")[0] == 404
    assert _request(f"{base}/static/../app.py")[0] == 404
    assert _request(f"{base}/", headers={"Host": "evil.example:80"})[0] == 400  # DNS rebinding
    assert _request(f"{base}/api/v/{token}/end", "POST")[0] == 204
    assert not folder.exists() and token not in state.visits


def _post(url, data):
    status, body = _request(url, "POST", json.dumps(data).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def test_generate_weights_rules(server, tmp_path, monkeypatch):
    """Without weights the page says what to do; a weights file may not point the server at its own files."""
    base, state = server
    import pixelforge.zoo.weights

    state.catalog.result(timeout=120)  # the page's model list is built with the real package folder
    (tmp_path / "no-package-weights").mkdir()  # as if var_d6_32's bundled file were not installed
    monkeypatch.setattr(pixelforge.zoo.weights, "PACKAGE_WEIGHTS", tmp_path / "no-package-weights")
    token = json.loads(_request(f"{base}/api/visit", "POST")[1])["visit"]
    var = pixelforge.create_model("var_d6_32", **SMALL_VAR)
    cfg = {"model": {"name": "var_d6_32", "args": SMALL_VAR}, "vqvae": {"name": "var_vqvae_f4_32",
                                                                       "weights": "/etc/hostname"}}
    path = save_weights(var, tmp_path / "var.safetensors", metadata={"config": json.dumps(cfg)})
    fid = json.loads(_request(f"{base}/api/v/{token}/upload?name=var.safetensors", "PUT", path.read_bytes())[1])["id"]
    messages = []
    for weights in ([], [fid]):
        status, body = _post(f"{base}/api/v/{token}/generate", {"model": "var_d6_32", "weights": weights, "n": 1})
        assert status == 200
        while (job := json.loads(_request(f"{base}/api/v/{token}/jobs/{body['job']}")[1]))["state"] != "failed":
            assert job["state"] != "done"
            time.sleep(0.1)
        messages.append(job["message"])
    assert messages[0].startswith("no weights for var_d6_32: its bundled weights are not installed")
    assert messages[1] == ("var.safetensors names its tokenizer weights by a path on the server; upload the "
                           "tokenizer file as well")
    assert _post(f"{base}/api/v/{token}/generate", {"model": "/tmp/pipeline-folder"})[1]["error"] == \
        "unknown generator '/tmp/pipeline-folder'"
    _request(f"{base}/api/v/{token}/end", "POST")


def test_upscale_job_outscale_and_pixel_limit(tmp_path):
    """The job behind the page: a model output resized to --outscale, an image over the pixel limit refused by
    name before decoding, each on its own item."""
    from pixelforge.serve.jobs import Job, UpscaleRequest, run_upscale

    small, big = LR.with_name("img_003_SRF_4_LR.png"), LR  # 64x64 and 128x128
    if not small.is_file():
        pytest.skip(f"Set5 not available: {small}")
    job = Job("upscale", {small: "small.png", big: "big.png"})
    req = UpscaleRequest([(small, "small.png"), (big, "big.png")], "cfsr_x4", None, 0, None, "fp32", 2.0, "cpu",
                         max_pixels=5000)
    run_upscale(job, req, tmp_path, lambda path, name: str(path))
    state = job.snapshot()
    assert state["state"] == "done" and state["message"] == "1 of 2 images done, 1 failed"
    assert state["items"][0]["size_out"] == [128, 128] and read_image(state["items"][0]["after"]).pixels.shape == (
        3, 128, 128)
    assert state["items"][1]["error"] == ("big.png: 128x128 is 16,384 pixels, over this server's limit of 5,000 "
                                          "(pixelforge serve --max-pixels)")


def test_generate_job_dit_equals_command(tmp_path):
    """DiT sampling through the page's job writes the grid `pixelforge generate` writes (random small weights)."""
    from pixelforge.serve.jobs import GenerateRequest, Job, run_generate

    torch.manual_seed(0)
    weights = save_weights(pixelforge.create_model("dit_micro_2"), tmp_path / "dit.safetensors")
    options = {"precision": "fp32", "task": None, "scheduler": "dpm++", "steps": 3, "guidance": 1.5}
    job = Job("generate")
    run_generate(job, GenerateRequest("dit_micro_2", [weights], None, "1,2", 2, 5, "cpu", [tmp_path], options),
                 tmp_path, lambda path, name: str(path))
    state = job.snapshot()
    assert state["state"] == "done" and [i["label"] for i in state["items"]] == [1, 1, 2, 2]
    assert main(["generate", "--model", "dit_micro_2", "--weights", str(weights), "--classes", "1,2", "-n", "2",
                 "--seed", "5", "--scheduler", "dpm++", "--steps", "3", "--guidance", "1.5", "--precision", "fp32",
                 "-o", str(tmp_path / "cli.png")]) == 0
    assert torch.equal(read_image(state["grid"]).pixels, read_image(tmp_path / "cli.png").pixels)


def test_run_tiled_reports_each_tile():
    from pixelforge.infer.tiling import run_tiled

    calls = []
    out = run_tiled(torch.nn.Identity(), torch.rand(1, 3, 40, 40), tile=16, overlap=4,
                    progress=lambda done, total: calls.append((done, total)))
    assert out.shape == (1, 3, 40, 40) and calls == [(k, 9) for k in range(1, 10)]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set PIXELFORGE_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs: pip install playwright")
    with sync_api.sync_playwright() as p:  # each launch runs on a fresh temporary profile, removed on close
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


@pytest.mark.timeout(120)
def test_page_upscale_errors_and_generate(browser, server, tmp_path):
    """Upload a Set5 image and a truncated PNG, run cfsr_x4 in tiles: the download equals `pixelforge upscale`,
    the bad file has its own error; then generate 4 VAR samples and download one."""
    if not LR.is_file():
        pytest.skip(f"Set5 not available: {LR}")
    base, state = server
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(LR.read_bytes()[:3000])
    torch.manual_seed(0)
    vq = save_weights(pixelforge.create_model("var_vqvae_f4_32", ch=32, vocab_size=64), tmp_path / "vq.safetensors")
    cfg = {"model": {"name": "var_d6_32", "args": SMALL_VAR}, "vqvae": {"name": "var_vqvae_f4_32",
                                                                       "args": {"ch": 32, "vocab_size": 64}}}
    var = save_weights(pixelforge.create_model("var_d6_32", **SMALL_VAR), tmp_path / "var.safetensors",
                       metadata={"config": json.dumps(cfg)})

    start = time.perf_counter()
    before = set(state.visits)
    page = browser.new_page(accept_downloads=True)
    page.goto(base)
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)  # the model list is built once (~10 s CPU)
    shots = Path(os.environ["PIXELFORGE_SCREENSHOTS"]) if os.environ.get("PIXELFORGE_SCREENSHOTS") else None

    # Upscale / dereflect: a Set5 LR image and a truncated PNG, cfsr_x4 in 64-pixel tiles (9 tiles), fp32
    page.set_input_files("#files", [str(truncated), str(LR)])
    page.select_option("#model", "cfsr_x4")
    page.fill("#tile", "64")
    page.select_option("#precision", "fp32")
    page.click("#run")
    page.wait_for_selector("#run:enabled", timeout=120_000)
    errors = page.locator(".result.error").all_inner_texts()
    assert len(errors) == 1 and errors[0].startswith("truncated.png: ") and "truncated" in errors[0][14:]
    assert page.inner_text("#status") == "1 of 2 images done, 1 failed"
    with page.expect_download() as download:
        page.click(".result .download")
    got = tmp_path / "page.png"
    download.value.save_as(got)
    assert download.value.suggested_filename == "img_001_SRF_4_LR-cfsr_x4.png"
    ref = tmp_path / "cli.png"
    assert main(["upscale", str(LR), "-o", str(ref), "--model", "cfsr_x4", "--tile", "64", "--precision", "fp32"]) == 0
    assert torch.equal(read_image(got).pixels, read_image(ref).pixels)  # bit-equal pixels
    with page.expect_download() as download:
        page.click("#zip")
    download.value.save_as(tmp_path / "all.zip")
    assert zipfile.ZipFile(tmp_path / "all.zip").namelist() == ["img_001_SRF_4_LR-cfsr_x4.png"]
    page.click(".result .zoom[data-zoom='2']")
    assert page.eval_on_selector(".result .stage", "s => s.getBoundingClientRect().width") == 1024  # 512 px × 2
    if shots:  # the README's screenshot
        page.click(".result .zoom[data-zoom='1']")
        page.set_viewport_size({"width": 1000, "height": 900})
        page.screenshot(path=str(shots / "serve-upscale.png"))

    # Generate: 4 VAR samples from uploaded random weights
    page.click("#tab-generate")
    page.select_option("#gen-model", "var_d6_32")
    page.set_input_files("#gen-weights", str(var))
    page.set_input_files("#gen-vae", str(vq))
    page.fill("#count", "4")
    page.fill("#seed", "3")
    page.select_option("#gen-precision", "fp32")
    page.click("#generate")
    page.wait_for_selector("#generate:enabled", timeout=120_000)
    assert page.inner_text("#gen-status") == "4 images from var_d6_32"
    page.wait_for_function("document.querySelector('#grid').naturalWidth > 0")  # the grid image is shown
    assert page.locator("#samples .sample-download").count() == 4
    with page.expect_download() as download:
        page.locator("#samples .sample-download").first.click()
    download.value.save_as(tmp_path / "sample.png")
    assert read_image(tmp_path / "sample.png").pixels.shape == (3, 32, 32)
    page.click("#tab-models")
    row = page.locator("#models-table tr", has_text="cfsr_x4").first.inner_text()
    assert "bundled" in row and "30.43 / 0.8626" in row
    elapsed = time.perf_counter() - start
    visits = [v for token, v in state.visits.items() if token not in before]
    assert len(visits) == 1
    page.goto("about:blank")  # leaving the page sends the end-of-visit beacon
    page.close()
    print(f"browser test: {elapsed:.1f} s wall from page load to the Models tab")
    deadline = time.monotonic() + 10  # pagehide sends the end-of-visit beacon: the folder goes
    while any(v.dir.exists() for v in visits) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(v.dir.exists() for v in visits)
