"""Local web demo: draw a mask in the browser and watch MaskGIT fill it step by step.

`create_app(model_path)` builds a small FastAPI app serving one hand-written page
(src/maskgit/web/: HTML, JS, CSS; nothing from a CDN) and a JSON API:

    GET  /api/health         model status (loading / ready / error), image size, queue length
    GET  /api/samples        bundled sample images [{name, url}]
    POST /api/inpaint        multipart: image, mask (white = repaint) + decoding params -> job
    POST /api/generate       form: n + decoding params -> job
    GET  /api/jobs/{id}      status (queued / running / done / error), queue position,
                             progress, and when done the images as base64 PNG data URLs

The model loads in a background thread, so the server answers at once (HTTP 503 with
"model is loading, try again in a moment" until it is ready). Jobs go through one queue and
one worker thread that runs them one at a time. Errors are JSON `{"error": message}` with a
4xx status; the server keeps running after every error.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError

from maskgit.data import IMAGE_SUFFIXES, to_rgb
from maskgit.decoding import check_decode_args
from maskgit.pipeline import check_prefill

WEB_DIR = Path(__file__).parent / "web"
SAMPLES_DIR = Path(__file__).parent / "samples" / "images"

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # one file; larger -> 413
MAX_REQUEST_BYTES = 2 * MAX_UPLOAD_BYTES + 1024 * 1024  # image + mask + form fields
MAX_SIDE = 4096  # larger images are downscaled (with a notice) before use
MAX_PIXELS = 16_000_000
MAX_DECODE_PIXELS = 64_000_000  # not even decoded: 413
MAX_STEPS = 64
MAX_GENERATE = 16
MAX_QUEUED = 32
KEEP_FINISHED_JOBS = 64
LOADING_MESSAGE = "model is loading, try again in a moment"
EMPTY_MASK_MESSAGE = "the mask is empty: paint the area to repaint"

FormStr = Annotated[str | None, Form()]  # parsed by hand: clear 400 messages

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


class ApiError(Exception):
    """An error answered as JSON {"error": message} with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- images


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def bool_png(mask: np.ndarray) -> Image.Image:
    """bool (H, W) -> L image, white where True."""
    return Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), "L")


TOKEN_COLOURS = {  # token_map: what each token is after a step
    "known": (70, 76, 90),  # given by the input, never decoded
    "earlier": (74, 122, 224),  # decoded at an earlier step
    "now": (255, 166, 0),  # decoded at this step
    "masked": (255, 255, 255),  # still masked
}


def token_map(start: np.ndarray, before: np.ndarray, now: np.ndarray) -> Image.Image:
    """RGB (h, w) map of one step from bool token masks (True = unknown) at the start of
    decoding, before this step and after it; colours in TOKEN_COLOURS."""
    out = np.empty((*start.shape, 3), np.uint8)
    out[~start] = TOKEN_COLOURS["known"]
    out[start & ~before] = TOKEN_COLOURS["earlier"]
    out[before & ~now] = TOKEN_COLOURS["now"]
    out[now] = TOKEN_COLOURS["masked"]
    return Image.fromarray(out, "RGB")


def read_upload(data: bytes, what: str) -> tuple[Image.Image, list[str]]:
    """Decode an uploaded image (any mode, not yet converted); returns it and notices.

    Corrupt or non-image data -> 400; over MAX_DECODE_PIXELS -> 413; over MAX_SIDE or
    MAX_PIXELS -> downscaled (aspect kept) with a notice.
    """
    if not data:
        raise ApiError(400, f"upload is not a readable image: the {what} file is empty")
    notices: list[str] = []
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_DECODE_PIXELS:
            raise ApiError(
                413,
                f"the {what} is {width}x{height} ({width * height / 1e6:.0f} MP): over the "
                f"{MAX_DECODE_PIXELS / 1e6:.0f} MP limit",
            )
        scale = min(1.0, MAX_SIDE / max(width, height), math.sqrt(MAX_PIXELS / (width * height)))
        if scale < 1.0:
            target = (
                min(MAX_SIDE, max(1, round(width * scale))),
                min(MAX_SIDE, max(1, round(height * scale))),
            )
            image.draft("RGB", target)  # JPEG: decode at a reduced scale already
            image = image.resize(target, Image.BICUBIC, reducing_gap=3.0)
            notices.append(
                f"the {what} was {width}x{height}; downscaled to {image.width}x{image.height} "
                f"(limit {MAX_SIDE} px a side, {MAX_PIXELS / 1e6:.0f} MP)"
            )
        image.load()
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"the {what} is too large to decode: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(400, f"upload is not a readable image: {what}: {exc}") from exc
    return image, notices


def model_size_image(image: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3): transparency on white, bicubic resize (the pipeline's rule)."""
    array = np.asarray(to_rgb(image), dtype=np.uint8)
    if array.shape[:2] != (size, size):
        array = np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC))
    return np.ascontiguousarray(array)


def model_size_mask(image: Image.Image, size: int) -> np.ndarray:
    """bool (size, size), True = repaint: bright (>= 128) opaque pixels of the mask image.

    Transparent pixels count as black. A mask of another size is thresholded at its own
    resolution first; a model pixel is repainted when any of its area was painted.
    """
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    binary = np.asarray(image.convert("L")) >= 128
    if binary.shape != (size, size):
        reduced = bool_png(binary).resize((size, size), Image.BOX)
        binary = np.asarray(reduced) > 0
    return binary


# --------------------------------------------------------------------------- params


def _parse_int(name: str, value: str | None, default: int | None) -> int | None:
    if value is None or str(value).strip() == "":
        return default
    try:
        return int(str(value).strip())
    except ValueError:
        raise ApiError(400, f"{name}={value!r}: expected a whole number") from None


def _parse_float(name: str, value: str | None, default: float) -> float:
    if value is None or str(value).strip() == "":
        return default
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ApiError(400, f"{name}={value!r}: expected a number") from None
    if not math.isfinite(number):
        raise ApiError(400, f"{name}={value!r}: expected a finite number")
    return number


def decode_params(
    steps: str | None,
    schedule: str | None,
    sweet_spot: str | None,
    temperature: str | None,
    seed: str | None,
    prefill: str | None = None,
) -> dict[str, Any]:
    """Form fields -> inpaint keyword arguments; any problem -> ApiError 400 naming it."""
    params = {
        "steps": _parse_int("steps", steps, 12),
        "schedule": (schedule or "cosine").strip(),
        "sweet_spot": _parse_int("sweet_spot", sweet_spot, None),
        "temperature": _parse_float("temperature", temperature, 1.0),
        "seed": _parse_int("seed", seed, 0),
        "prefill": (prefill or "telea").strip(),
    }
    try:
        check_decode_args(params["steps"], params["sweet_spot"], params["schedule"])
        check_prefill(params["prefill"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if params["steps"] > MAX_STEPS:
        raise ApiError(400, f"steps={params['steps']}: at most {MAX_STEPS} in the demo")
    if params["temperature"] < 0:
        raise ApiError(400, f"temperature={params['temperature']}: expected >= 0")
    if not 0 <= params["seed"] < 2**62:
        raise ApiError(400, f"seed={params['seed']}: expected 0 <= seed < 2^62")
    return params


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    id: str
    kind: str  # inpaint | generate
    seq: int
    params: dict[str, Any]
    inputs: dict[str, Any]  # what the worker needs (arrays), not sent back
    notices: list[str] = field(default_factory=list)
    status: str = "queued"  # queued | running | done | error
    phase: str = "waiting in the queue"
    done_steps: int = 0
    total_steps: int = 0
    error: str | None = None
    result: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None


class Service:
    """Model holder, loader thread, job table and the single worker thread."""

    def __init__(self, loader: Callable[[], Any]):
        self._loader = loader
        self.model: Any = None
        self.load_error: str | None = None
        self.ready = threading.Event()
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self._seq = itertools.count()
        self._load_thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> None:
        """Start loading the model (once) and the worker (if not running); idempotent."""
        with self.lock:
            if self._load_thread is None:
                self._load_thread = threading.Thread(
                    target=self._load, name="maskgit-load", daemon=True
                )
                self._load_thread.start()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._work, name="maskgit-worker", daemon=True
                )
                self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        worker = self._worker
        if worker is not None and worker.is_alive():
            self.queue.put(None)
            worker.join(timeout)

    def _load(self) -> None:
        try:
            self.model = self._loader()
        except Exception as exc:  # reported by /api/health and every job request
            self.load_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    @property
    def state(self) -> str:
        if not self.ready.is_set():
            return "loading"
        return "ready" if self.model is not None else "error"

    def require_model(self) -> Any:
        if not self.ready.is_set():
            raise ApiError(503, LOADING_MESSAGE)
        if self.model is None:
            raise ApiError(503, f"the model could not be loaded: {self.load_error}")
        return self.model

    # ---- jobs

    def submit(self, kind: str, params: dict, inputs: dict, notices: list[str]) -> Job:
        with self.lock:
            waiting = self._waiting()
            if waiting >= MAX_QUEUED:
                raise ApiError(429, f"the queue is full ({waiting} jobs waiting): try again later")
            job = Job(uuid.uuid4().hex, kind, next(self._seq), params, inputs, notices)
            self.jobs[job.id] = job
            self._prune()
        self.queue.put(job)
        return job

    def _waiting(self) -> int:
        return sum(job.status == "queued" for job in self.jobs.values())

    def waiting(self) -> int:
        with self.lock:
            return self._waiting()

    def _prune(self) -> None:
        finished = [j for j in self.jobs.values() if j.status in ("done", "error")]
        for job in sorted(finished, key=lambda j: j.seq)[:-KEEP_FINISHED_JOBS]:
            del self.jobs[job.id]

    def ahead_of(self, job: Job) -> int:
        """Jobs that will finish before `job` starts (running ones included)."""
        with self.lock:
            return sum(
                (other.status == "queued" and other.seq < job.seq) or other.status == "running"
                for other in self.jobs.values()
                if other is not job
            )

    def describe(self, job: Job) -> dict[str, Any]:
        ahead = self.ahead_of(job) if job.status == "queued" else 0
        info: dict[str, Any] = {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "phase": job.phase,
            "position": ahead,
            "progress": {"done": job.done_steps, "total": job.total_steps},
            "params": job.params,
            "notices": job.notices,
        }
        if job.started is not None:
            info["seconds"] = round((job.finished or time.time()) - job.started, 3)
        if job.status == "error":
            info["error"] = job.error
        if job.status == "done":
            info["result"] = job.result
        return info

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            job.status, job.phase, job.started = "running", "encoding", time.time()
            try:
                job.result = self._run(job)
                job.status, job.phase = "done", "done"
            except Exception as exc:  # the worker survives every job
                job.error = f"{type(exc).__name__}: {exc}"
                job.status, job.phase = "error", "failed"
            finally:
                job.finished = time.time()
                job.inputs = {}

    def _run(self, job: Job) -> dict[str, Any]:
        model = self.model
        params = job.params
        job.total_steps = params["sweet_spot"] or params["steps"]
        kwargs = dict(params, return_steps=True)
        with _count_steps(model, job):
            if job.kind == "inpaint":
                image, mask = job.inputs["image"], job.inputs["mask"]
                out = model.inpaint(image, torch.from_numpy(mask), **kwargs)
            else:
                kwargs.pop("n")
                out = model.generate(params["n"], **kwargs)
        job.phase = "rendering steps"
        images = []
        for i, picture in enumerate(out.images):
            start = np.asarray(out.token_masks[i], dtype=bool)
            steps, before = [], start
            for frame in out.steps[i] if out.steps else []:
                now = np.asarray(frame.token_mask, dtype=bool)
                steps.append(
                    {
                        "step": frame.step + 1,
                        "image": png_data_url(frame.image),
                        "token_mask": png_data_url(bool_png(now)),
                        "token_map": png_data_url(token_map(start, before, now)),
                        "unknown": int(now.sum()),
                        "decoded": int((before & ~now).sum()),
                    }
                )
                before = now
            images.append(
                {
                    "image": png_data_url(picture),
                    "token_mask": png_data_url(bool_png(start)),
                    "token_map": png_data_url(token_map(start, start, start)),
                    "steps": steps,
                }
            )
        result: dict[str, Any] = {
            "image_size": int(model.image_size),
            "token_grid": int(model.image_size // model.downsample),
            "images": images,
        }
        if job.kind == "inpaint":
            result["input"] = png_data_url(Image.fromarray(job.inputs["image"]))
            result["mask"] = png_data_url(bool_png(job.inputs["mask"]))
        return result


class _count_steps:
    """Count decoding steps for progress by wrapping the model's per-step logits call.

    `MaskGIT.fill_tokens` calls `self._logits` once per decoding step; an instance attribute
    shadows the method for the duration of one job (only the worker thread uses the model).
    Without that hook progress stays coarse (0 until done).
    """

    def __init__(self, model: Any, job: Job):
        self.model, self.job = model, job
        self.hooked = callable(getattr(type(model), "_logits", None))

    def __enter__(self) -> None:
        if not self.hooked:
            return
        inner, job = self.model._logits, self.job

        def counting(tokens: torch.Tensor) -> torch.Tensor:
            job.phase = f"decoding step {job.done_steps + 1} of {job.total_steps}"
            logits = inner(tokens)
            job.done_steps = min(job.done_steps + 1, job.total_steps)
            return logits

        self.model._logits = counting

    def __exit__(self, *exc: object) -> None:
        if self.hooked:
            self.model.__dict__.pop("_logits", None)
        self.job.done_steps = self.job.total_steps if exc[0] is None else self.job.done_steps


# --------------------------------------------------------------------------- app


def list_samples(folder: Path) -> list[dict[str, str]]:
    if not folder.is_dir():
        return []
    return [
        {"name": path.name, "url": f"/samples/{path.name}"}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]


def _read_file(upload: UploadFile, what: str) -> bytes:
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ApiError(
            413, f"the {what} upload is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB: too large"
        )
    return data


def create_app(
    model_path: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    loader: Callable[[], Any] | None = None,
    samples_dir: str | Path | None = None,
) -> FastAPI:
    """The demo app. The model (`MaskGIT.from_pretrained(model_path, device)`, or `loader()`
    when given, e.g. a slow stand-in in tests) loads in a background thread at startup."""
    if loader is None:

        def loader() -> Any:
            from maskgit.pipeline import MaskGIT

            return MaskGIT.from_pretrained(model_path, device=device)

    service = Service(loader)
    samples = Path(samples_dir) if samples_dir is not None else SAMPLES_DIR

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="MaskGIT demo", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
        )

    @app.middleware("http")
    async def guard(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return JSONResponse(
                {
                    "error": f"request of {int(length):,} bytes is too large (uploads: at most "
                    f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB a file)"
                },
                status_code=413,
            )
        service.start()  # in case the server runs without lifespan events
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        model = service.model
        info: dict[str, Any] = {
            "status": service.state,
            "loaded": model is not None,
            "error": service.load_error,
            "queued": service.waiting(),
        }
        if service.state == "loading":
            info["message"] = LOADING_MESSAGE
        if model is not None:
            info["image_size"] = int(model.image_size)
            info["token_grid"] = int(model.image_size // model.downsample)
            info["device"] = str(getattr(model, "device", "cpu"))
        return info

    @app.get("/api/samples")
    def get_samples() -> list[dict[str, str]]:
        return list_samples(samples)

    @app.get("/samples/{name}", include_in_schema=False)
    def sample_file(name: str) -> FileResponse:
        if name not in {s["name"] for s in list_samples(samples)}:
            raise ApiError(404, f"no sample named {name!r}")
        return FileResponse(samples / name)

    @app.post("/api/inpaint")
    def inpaint(
        image: Annotated[UploadFile | None, File()] = None,
        mask: Annotated[UploadFile | None, File()] = None,
        steps: FormStr = None,
        schedule: FormStr = None,
        sweet_spot: FormStr = None,
        temperature: FormStr = None,
        seed: FormStr = None,
        prefill: FormStr = None,
    ) -> dict[str, Any]:
        model = service.require_model()
        if image is None or mask is None:
            missing = " and ".join(n for n, f in (("image", image), ("mask", mask)) if f is None)
            raise ApiError(400, f"missing upload: {missing} (multipart form fields)")
        params = decode_params(steps, schedule, sweet_spot, temperature, seed, prefill)
        picture, notices = read_upload(_read_file(image, "image"), "image")
        painted, mask_notices = read_upload(_read_file(mask, "mask"), "mask")
        size = int(model.image_size)
        pixels = model_size_image(picture, size)
        repaint = model_size_mask(painted, size)
        if not repaint.any():
            raise ApiError(400, EMPTY_MASK_MESSAGE)
        if picture.size != (size, size):
            notices.append(
                f"the image ({picture.width}x{picture.height}) was resized to the model's "
                f"{size}x{size}"
            )
        job = service.submit(
            "inpaint", params, {"image": pixels, "mask": repaint}, notices + mask_notices
        )
        return {"job_id": job.id, "position": service.ahead_of(job), "notices": job.notices}

    @app.post("/api/generate")
    def generate(
        n: FormStr = None,
        steps: FormStr = None,
        schedule: FormStr = None,
        sweet_spot: FormStr = None,
        temperature: FormStr = None,
        seed: FormStr = None,
    ) -> dict[str, Any]:
        service.require_model()
        params = decode_params(steps, schedule, sweet_spot, temperature, seed)
        count = _parse_int("n", n, 4)
        if not 1 <= count <= MAX_GENERATE:
            raise ApiError(400, f"n={count}: expected 1 to {MAX_GENERATE} images")
        params["n"] = count
        job = service.submit("generate", params, {}, [])
        return {"job_id": job.id, "position": service.ahead_of(job), "notices": []}

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        job = service.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} (unknown, or finished long ago)")
        return service.describe(job)

    return app
