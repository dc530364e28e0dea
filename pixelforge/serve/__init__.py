"""A local web page (``pixelforge serve``) for upscaling, reflection removal and generation (extra ``pixelforge[ui]``).

    pip install -e ".[ui]" && pixelforge serve        # then open http://127.0.0.1:7860

Three tabs on the runners of the command line (``upscale``/``dereflect``'s ``load_runner`` and tiled runner,
``generate``'s VAR and diffusion paths), so the page writes the same pixels as the commands: Upscale / dereflect
(several images, before/after comparison at full resolution with zoom, per-file errors, downloads and a zip),
Generate (VAR, DiT + DiffScaler) and Models (the zoo with weights and bundled scores). The server is a small
Starlette app (:mod:`.app`) served by uvicorn; see :mod:`.app` for what a page can and cannot read.

Why not Gradio: it installs (gradio 6.31, 30 s from a local mirror) but pins Pillow < 13, so ``.[ui]`` would
downgrade the Pillow the image I/O is tested with, and brings pandas and 235 MB; its own upload cache and file
routes make "a per-visit folder, nothing else readable" harder to guarantee. Starlette (the ASGI layer under FastAPI
and Gradio) and uvicorn add about 1 MB and no constraint on the project's packages.
"""
from __future__ import annotations

__all__: list[str] = []  # the app is in .app (imports starlette); the command is pixelforge.cli.serve
