"""The web page's server: a Starlette app with a static page and a small JSON API over :mod:`.jobs`.

Safety rules, in one place:

- a visit (one page load) gets a random token and its own temporary folder; uploads are streamed into it with a
  size limit, results are written into it, and the folder is removed when the page is closed, after
  ``visit_timeout`` seconds without a request, and when the server stops;
- files are served by id from the visit's own registry (never by a path from the request), so nothing outside the
  visit's folder can be read through the page; uploads themselves are never served back (the page shows decoded
  copies written by pixelforge);
- a weights file may only be a visit upload or one the server was started with (``--weights MODEL=PATH``);
- requests whose Host header is not the address the server listens on are refused (DNS rebinding).
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..generative.diffscaler.pipeline import SCHEDULERS
from ..infer.precision import resolve_device
from ..zoo import pixelforge_home
from ..zoo.weights import PACKAGE_WEIGHTS
from .catalog import build_catalog, catalog_json, cli_args, cli_choices
from .jobs import GenerateRequest, Job, UpscaleRequest, run_generate, run_upscale

__all__ = ["Settings", "create_app"]

STATIC = Path(__file__).parent / "static"
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                                       "frame-ancestors 'none'"}


@dataclass
class Settings:
    """Server options (``pixelforge serve``)."""

    host: str = "127.0.0.1"
    max_upload_bytes: int = 100 * 2 ** 20
    max_pixels: int = 0  # 0: Pillow's MAX_IMAGE_PIXELS
    device: str = "auto"
    weights: dict[str, Path] = field(default_factory=dict)  # model name -> weights file on the server
    visit_timeout: float = 3600.0


@dataclass
class _File:
    path: Path
    name: str


class Visit:
    """One page load: a token, a temporary folder, the files registered for download and the jobs."""

    def __init__(self):
        self.token = secrets.token_urlsafe(24)
        self.dir = Path(tempfile.mkdtemp(prefix="pixelforge-visit-"))
        self.files: dict[str, _File] = {}
        self.uploads: dict[str, _File] = {}
        self.jobs: dict[str, Job] = {}
        self.seen = time.monotonic()

    def register(self, path: Path, name: str) -> str:
        """Make a file of this visit downloadable; returns its URL."""
        fid = secrets.token_hex(8)
        self.files[fid] = _File(path, name)
        return f"/api/v/{self.token}/files/{fid}/{_safe_name(name)}"

    def names(self) -> dict[Path, str]:
        """The uploads' paths and the names the user gave them."""
        return {f.path: f.name for f in self.uploads.values()}

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _safe_name(name: str) -> str:
    """A file name without folders or unusual characters, at most 100 characters."""
    name = re.sub(r"[^\w.+-]+", "_", Path(name.replace("\\", "/")).name).strip("._") or "file"
    return name[-100:]


class _Server:
    """The app's state: settings, visits, the single worker thread and the model catalogue."""

    def __init__(self, settings: Settings):
        from PIL import Image

        self.settings = settings
        self.max_pixels = settings.max_pixels or int(Image.MAX_IMAGE_PIXELS or 2 ** 31)
        self.visits: dict[str, Visit] = {}
        self.lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelforge-serve")
        self.catalog: Future = self.worker.submit(build_catalog, settings.weights)

    def visit(self, request: Request) -> Visit:
        token = request.path_params["token"]
        with self.lock:
            visit = self.visits.get(token)
            if visit is None:
                raise _Refused(404, "this page's session has ended; reload the page")
            visit.seen = time.monotonic()
            return visit

    def sweep(self) -> None:
        """Remove visits idle for longer than the timeout whose jobs are all finished."""
        limit = time.monotonic() - self.settings.visit_timeout
        with self.lock:
            stale = [t for t, v in self.visits.items() if v.seen < limit and all(j.finished for j in v.jobs.values())]
            for token in stale:
                self.visits.pop(token).close()

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            for visit in self.visits.values():
                visit.close()
            self.visits.clear()


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(settings: Settings | None = None) -> Starlette:
    """The page's ASGI app. The model catalogue is built in the worker thread when the app is created."""
    settings = settings or Settings()
    server = _Server(settings)
    up, gen = cli_args("upscale", ["-", "-o", "-"]), cli_args("generate", ["--model", "-"])  # the CLI's defaults
    up_precisions, gen_precisions = cli_choices("upscale", "precision")[0], cli_choices("generate", "precision")[0]
    device = str(resolve_device(settings.device))

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=_HEADERS)

    async def new_visit(request: Request) -> Response:
        visit = Visit()
        with server.lock:
            server.visits[visit.token] = visit
        return JSONResponse({"visit": visit.token, "max_upload_bytes": settings.max_upload_bytes,
                             "max_pixels": server.max_pixels})

    async def end_visit(request: Request) -> Response:
        with server.lock:
            visit = server.visits.pop(request.path_params["token"], None)
        if visit is not None:
            for job in visit.jobs.values():  # a running job finishes into a removed folder and is dropped
                job.update(state="failed", message="the page was closed")
            visit.close()
        return Response(status_code=204)

    async def models(request: Request) -> Response:
        catalog = await asyncio.wrap_future(server.catalog)
        return JSONResponse({
            "models": catalog_json(catalog), "device": device,
            "upscale": {"precisions": up_precisions, "precision": up.precision, "tile": up.tile},
            "generate": {k: getattr(gen, k) for k in ("cfg", "top_k", "top_p", "steps", "guidance", "seed",
                                                       "precision", "scheduler")}
            | {"schedulers": list(SCHEDULERS), "precisions": gen_precisions},
        })

    async def upload(request: Request) -> Response:
        visit = server.visit(request)
        limit = settings.max_upload_bytes
        name = request.query_params.get("name", "upload")
        if int(request.headers.get("content-length") or 0) > limit:
            raise _Refused(413, f"{name}: larger than this server's upload limit of {limit / 2 ** 20:g} MB "
                                f"(pixelforge serve --max-upload-mb)")
        fid = secrets.token_hex(8)
        folder = visit.dir / "uploads"
        folder.mkdir(exist_ok=True)
        path = folder / f"{fid}-{_safe_name(name)}"
        size = 0
        with open(path, "xb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    f.close()
                    path.unlink()
                    raise _Refused(413, f"{name}: larger than this server's upload limit of "
                                        f"{limit / 2 ** 20:g} MB (pixelforge serve --max-upload-mb)")
                f.write(chunk)
        visit.uploads[fid] = _File(path, name)
        return JSONResponse({"id": fid, "name": name, "bytes": size})

    def uploaded(visit: Visit, fid, what: str) -> _File:
        if fid not in visit.uploads:
            raise _Refused(400, f"unknown {what}; upload it again")
        return visit.uploads[fid]

    def number(body: dict, key: str, kind, default=None, low=None, high=None):
        value = body.get(key, default)
        if value in (None, "") and default is None:
            return None
        try:
            value = kind(default if value in (None, "") else value)
        except (TypeError, ValueError):
            raise _Refused(400, f"{key} must be a number, got {value!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Refused(400, f"{key} must be in [{low}, {high}], got {value}")
        return value

    async def catalog_names(kinds: tuple[str, ...]) -> set[str]:
        return {m.name for m in await asyncio.wrap_future(server.catalog) if m.kind in kinds}

    def start(visit: Visit, job: Job, fn, req) -> Response:
        out = visit.dir / "results"
        out.mkdir(exist_ok=True)
        visit.jobs[job.id] = job

        def run():
            try:
                fn(job, req, out, visit.register)
            except Exception as exc:  # a bug must still end the job visibly
                job.update(state="failed", message=f"internal error: {type(exc).__name__}: {exc}")

        server.worker.submit(run)
        return JSONResponse({"job": job.id})

    async def upscale(request: Request) -> Response:
        visit = server.visit(request)
        body = await request.json()
        files = [uploaded(visit, fid, "image") for fid in body.get("inputs") or []]
        if not files:
            raise _Refused(400, "add at least one image")
        weights = uploaded(visit, body["weights"], "checkpoint").path if body.get("weights") else None
        model = body.get("model") or None
        if model is not None and model not in await catalog_names(("image",)):
            raise _Refused(400, f"unknown image model {model!r}")
        if weights is None and model in settings.weights:
            weights = settings.weights[model]
        precision = body.get("precision") or up.precision
        if precision not in up_precisions:
            raise _Refused(400, f"precision must be one of {', '.join(up_precisions)}")
        req = UpscaleRequest([(f.path, f.name) for f in files], model, weights,
                             number(body, "tile", int, up.tile, 0, 8192), number(body, "tile_overlap", int, None, 0),
                             precision, number(body, "outscale", float, None, 0.05, 16), device, server.max_pixels)
        return start(visit, Job("upscale", visit.names()), run_upscale, req)

    async def generate(request: Request) -> Response:
        visit = server.visit(request)
        body = await request.json()
        model = body.get("model")
        if model not in await catalog_names(("var", "diffusion")):
            raise _Refused(400, f"unknown generator {model!r}")
        weights = [uploaded(visit, fid, "weights file").path for fid in body.get("weights") or []]
        if not weights and model in settings.weights:
            weights = [settings.weights[model]]
        vae = uploaded(visit, body["vae_weights"], "tokenizer file").path if body.get("vae_weights") else None
        precision, scheduler = body.get("precision") or gen.precision, body.get("scheduler") or gen.scheduler
        if precision not in gen_precisions:
            raise _Refused(400, f"precision must be one of {', '.join(gen_precisions)}")
        if scheduler not in SCHEDULERS:
            raise _Refused(400, f"sampler must be one of {', '.join(SCHEDULERS)}")
        req = GenerateRequest(
            model, weights, vae, str(body.get("classes") or ""), number(body, "n", int, gen.n, 1, 64),
            number(body, "seed", int, gen.seed, 0, 2 ** 63 - 1), device,
            [visit.dir, pixelforge_home() / "weights", PACKAGE_WEIGHTS, *{p.parent for p in settings.weights.values()}],
            {"precision": precision, "cfg": number(body, "cfg", float, gen.cfg, 0, 100),
             "top_k": number(body, "top_k", int, gen.top_k, 0), "top_p": number(body, "top_p", float, gen.top_p, 0, 1),
             "task": body.get("task") or None, "scheduler": scheduler,
             "steps": number(body, "steps", int, gen.steps, 1, 1000),
             "guidance": number(body, "guidance", float, gen.guidance, 0, 100)})
        return start(visit, Job("generate", visit.names()), run_generate, req)

    async def job_state(request: Request) -> Response:
        job = server.visit(request).jobs.get(request.path_params["job"])
        if job is None:
            raise _Refused(404, "unknown job")
        return JSONResponse(job.snapshot())

    async def file(request: Request) -> Response:
        entry = server.visit(request).files.get(request.path_params["fid"])
        if entry is None or not entry.path.is_file():
            raise _Refused(404, "no such file in this page's session")
        attach = "attachment" if request.query_params.get("download") else "inline"
        return FileResponse(entry.path, filename=_safe_name(entry.name), content_disposition_type=attach,
                            headers=_HEADERS)

    def guard(handler):
        async def wrapped(request: Request) -> Response:
            server.sweep()
            try:
                return await handler(request)
            except _Refused as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=_HEADERS)
            except ValueError as exc:  # a body that is not JSON
                return JSONResponse({"error": f"bad request: {exc}"}, status_code=400, headers=_HEADERS)
        return wrapped

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.close()

    hosts = ["*"] if settings.host in ("0.0.0.0", "::") else [settings.host, "127.0.0.1", "localhost", "[::1]"]
    api = "/api/v/{token}"
    routes = [
        Route("/", page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/models", guard(models)),
        Route("/api/visit", guard(new_visit), methods=["POST"]),
        Route(f"{api}/end", guard(end_visit), methods=["POST"]),
        Route(f"{api}/upload", guard(upload), methods=["PUT"]),
        Route(f"{api}/upscale", guard(upscale), methods=["POST"]),
        Route(f"{api}/generate", guard(generate), methods=["POST"]),
        Route(f"{api}/jobs/{{job}}", guard(job_state)),
        Route(f"{api}/files/{{fid}}/{{name}}", guard(file)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
    app.state.server = server
    return app
