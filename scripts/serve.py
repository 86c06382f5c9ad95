"""Serve the model locally: a REST API and a web page (photos and the webcam).

    python scripts/serve.py                       # http://127.0.0.1:8000: the page; API under /v1
    curl -F file=@photo.jpg 127.0.0.1:8000/v1/predict
    FERVGG_TOKEN=secret python scripts/serve.py --host 0.0.0.0

API: POST /v1/predict (one image, a multipart file or the raw body; ?tta=true,
?detect=false) gives the records of `predict_emotion.py --json`; POST /v1/predict/batch
takes several; GET /v1/health, GET /v1/model; the OpenAPI docs at /docs. Errors are JSON
{"error": "..."} with their status (400, 401, 413, 415, 503).

The model loads once, at start-up; requests are recognised by --workers threads, and at
most --queue more wait (the rest get 503 at once). Only this machine can connect unless
--host says otherwise; with --token (or the FERVGG_TOKEN variable, which `ps` does not
show) the API needs `Authorization: Bearer TOKEN`. Ctrl+C stops.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli import HelpFormatter, as_flags, number, parse_settings, run_cli
from fervgg import config
from fervgg.classifiers import BACKEND_HELP, BACKENDS
from fervgg.common import FervggError
from fervgg.faces import DETECTORS

try:
    from fervgg.service import TOKEN_ENV, ServiceSettings, create_app, listen, serve, url_of
except FervggError as exc:  # FastAPI or uvicorn not installed
    sys.exit(f"error: {exc}")


def parse_args(argv=None) -> tuple[ServiceSettings, bool]:
    R = ServiceSettings.RANGES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 makes the service reachable by other machines")
    p.add_argument("--port", type=number(int, **R["port"]), default=8000, help="port (0: any free one)")
    p.add_argument("--token", default=None,
                   help=f"require `Authorization: Bearer TOKEN` on the API (default: ${TOKEN_ENV} if set)")
    p.add_argument("--model", type=Path, default=None,
                   help="a .keras or .tflite model (default: fine_tuned_model.keras or best_model.keras in "
                        "--models-dir, else the shipped model)")
    p.add_argument("--models-dir", type=Path, default=config.MODELS_DIR, help="where the default model is looked for")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help=BACKEND_HELP)
    p.add_argument("--detector", choices=DETECTORS, default=config.DETECTOR, help="face detector")
    p.add_argument("--workers", type=number(int, **R["workers"]), default=None,
                   help="requests recognised at once (default: the number of cores)")
    p.add_argument("--queue", type=number(int, **R["queue"]), default=ServiceSettings.queue,
                   help="requests that may wait for a worker; more are answered 503 (busy)")
    p.add_argument("--max-upload-mb", type=number(float, **R["max_upload_mb"]), default=ServiceSettings.max_upload_mb,
                   help="largest request body (all images of a batch together); more is answered 413")
    p.add_argument("--max-batch", type=number(int, **R["max_batch"]), default=ServiceSettings.max_batch,
                   help="most images in one /v1/predict/batch request")
    p.add_argument("--max-megapixels", type=number(float, **R["max_megapixels"]),
                   default=config.MAX_IMAGE_PIXELS / 1e6,
                   help="refuse images larger than this when decoded (413), against decompression bombs")
    p.add_argument("--threads", type=number(int, **R["threads"]), default=None,
                   help="LiteRT CPU threads of each worker's detector and classifier (each worker has its own; "
                        "default: all available cores)")
    p.add_argument("--access-log", action="store_true", help="print a line per request")
    return parse_settings(p, argv, settings_of)


def settings_of(access_log: bool, token: str | None, workers: int | None, **flags) -> tuple[ServiceSettings, bool]:
    token = token or os.environ.get(TOKEN_ENV) or None
    return ServiceSettings(token=token, **({"workers": workers} if workers else {}), **flags), access_log


def main(argv=None) -> int:
    settings, access_log = parse_args(argv)
    sock = listen(settings)  # a port in use fails before the model loads
    app = create_app(settings, explain=as_flags)
    work = app.state.recognition
    url = url_of(sock)
    print(f"model {work.rec.classifier.path} ({work.rec.classifier.backend}), detector {work.rec.detector}, "
          f"{settings.workers} worker(s), queue {settings.queue}", file=sys.stderr)
    if not settings.loopback:
        print(f"note: listening on {settings.host}: other machines can reach this service"
              + ("" if settings.token else f"; anyone who can may use it (--token or ${TOKEN_ENV} requires a token)"),
              file=sys.stderr)
    print(f"serving {url} (the page; API under {url}/v1, docs at {url}/docs); Ctrl+C stops", file=sys.stderr,
          flush=True)
    try:
        serve(settings, app, sock, access_log=access_log)
    except KeyboardInterrupt:
        pass
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
