"""Local web demo: draw a mask in the browser and watch MaskGIT fill it step by step.

`create_app(model_path)` builds a small FastAPI app serving one hand-written page
(src/maskgit/web/: HTML, JS, CSS; nothing from a CDN) and a JSON API:

    GET  /api/health         model status (loading / ready / error), image size, queue length
    GET  /api/samples        bundled sample images [{name, url}]
    GET  /api/defaults       the decoding options the page starts from (DEFAULT_DECODING)
    POST /api/inpaint        multipart: image, mask (white = repaint; transparent = keep)
                             + decoding options -> job
    POST /api/outpaint       multipart: image, pad (the margin to generate around the image,
                             which keeps its own size: pixels "16" or "25%" of its side;
                             default 50%) + decoding options -> job
    POST /api/generate       form: n + decoding options -> job
    GET  /api/jobs/{id}      status (queued / running / done / error / cancelled), queue
                             position, phase, progress, and when done the URLs of its pictures
    GET  /api/jobs/{id}/files/{name}   one picture of a finished job (PNG)
    DELETE /api/jobs/{id}    cancel a job (queued: at once; running: at its next checkpoint)

The decoding options are the fields of `maskgit.options.DecodingOptions`, sent as form
fields of the same names (empty = the default). Uploads are read by `maskgit.reader`, like
files of the CLI. The model loads in a background thread, so the server answers at once
(HTTP 503 with "model is loading, try again in a moment" until it is ready). Jobs go through
one queue (`JobQueue`) and one worker thread that runs them one at a time; progress comes
from the decoder's step callback and the phases from `maskgit.phases` checkpoints, where a
cancelled job or a stopping server ends the work. A finished job keeps its pictures once, as
PNG bytes, within a byte budget (RESULT_BYTES) and for JOB_TTL_S. Errors are JSON `{"error": message}` with a 4xx status; the
server keeps running after every error.

Layout: uploads and form fields, the job queue, result rendering, then the routes;
`create_app` only wires them together.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from maskgit.data import IMAGE_SUFFIXES
from maskgit.decoding import DecodeStep
from maskgit.options import DEFAULT_DECODING, DecodingOptions, option_names
from maskgit.phases import DECODING_PHASE, checkpoint, watched
from maskgit.pipeline import (
    DEFAULT_PAD,
    MAX_PIXELS,
    MAX_SIDE,
    outpaint_canvas,
    outpaint_layout,
    parse_pad,
)
from maskgit.reader import colour_profile, fit_mask, image_tensor, mask_tensor, upright

WEB_DIR = Path(__file__).parent / "web"
SAMPLES_DIR = Path(__file__).parent / "samples" / "images"

# MAX_SIDE, MAX_PIXELS (from the pipeline): larger uploads are downscaled (with a notice)
# before use; a larger outpaint canvas is refused (outpaint_layout), as in the CLI
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # one file; larger -> 413
MAX_REQUEST_BYTES = 2 * MAX_UPLOAD_BYTES + 1024 * 1024  # image + mask + form fields
DECODE_SLOTS = 2  # uploads decoded at the same time; more wait for a slot
DECODE_WAIT_S = 60.0  # then 503
DECODE_BYTES_PER_PIXEL = 40  # peak memory of decoding + converting one pixel (RGBA, copies)


def physical_memory() -> int | None:
    """The machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def decode_budget(limit: int = 24_000_000, floor: int = 4_000_000) -> int:
    """Pixels an upload may decode to (after JPEG draft reduction): `limit`, less on a machine
    where DECODE_SLOTS decodes of that size would need over an eighth of the memory."""
    memory = physical_memory()
    if memory is None:
        return limit
    return int(max(floor, min(limit, memory // 8 // (DECODE_BYTES_PER_PIXEL * DECODE_SLOTS))))


def result_budget(memory: int | None = None, floor: int = 256 << 20, ceiling: int = 2 << 30) -> int:
    """Bytes the job table may hold (finished jobs' PNGs, waiting jobs' input tensors): a
    sixteenth of `memory` (default: the machine's), at least `floor` (two jobs at the largest
    size, ~100 MB each, plus the queue's small ones) and at most `ceiling`. The rest is the
    model's, the decodes' (an eighth, `decode_budget`) and the running job's."""
    memory = physical_memory() if memory is None else memory
    if memory is None:
        return floor
    return int(max(floor, min(ceiling, memory // 16)))


MAX_DECODE_PIXELS = decode_budget()  # larger (after draft reduction): not decoded, 413
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # Host names always served
MAX_STEPS = 64
MAX_GENERATE = 16
MAX_QUEUED = 32
KEEP_FINISHED_JOBS = 64
RESULT_BYTES = result_budget()  # finished jobs' pictures + waiting jobs' inputs, all clients
JOB_TTL_S = 600.0  # a finished job and its pictures are dropped this long after it ended
PRUNE_EVERY_S = 30.0  # the idle worker drops expired jobs this often
FINISHED = ("done", "error", "cancelled")
MAX_FIELD_CHARS = 80  # longer form values are refused, echoed cut to this length
FORM_FIELDS = (*option_names(), "n", "pad")  # the text fields the routes read
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap
LOADING_MESSAGE = "model is loading, try again in a moment"
EMPTY_MASK_MESSAGE = "the mask is empty: paint the area to repaint"

FormStr = Annotated[str | None, Form()]  # parsed by hand: clear 400 messages

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {  # on every answer, the guard's own refusals and 500s included
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
}


class JobCancelled(Exception):
    """A running job ended: cancelled by its client, or the server stops."""


class ApiError(Exception):
    """An error answered as JSON {"error": message} with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- images


class Pictures:
    """A job's result pictures, each encoded once as PNG bytes and served at its own URL
    (`/api/jobs/<id>/files/<name>.png`): polling the job sends URLs, never the pictures."""

    def __init__(self, job_id: str, icc_profile: bytes | None = None):
        self.prefix = f"/api/jobs/{job_id}/files/"
        self.files: dict[str, bytes] = {}
        self.icc_profile = icc_profile  # the upload's RGB colour profile, kept on its pictures

    def add(self, name: str, image: Image.Image) -> str:
        """Encode `image` as `<name>.png` (a checkpoint first: a large one takes seconds),
        tagged with the upload's colour profile when it is an RGB picture; returns its URL."""
        checkpoint()
        buffer = io.BytesIO()
        tagged = self.icc_profile is not None and image.mode == "RGB"
        image.save(buffer, format="PNG", **({"icc_profile": self.icc_profile} if tagged else {}))
        self.files[f"{name}.png"] = buffer.getvalue()
        return f"{self.prefix}{name}.png"


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


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """`text` cut to `limit` characters, with "..." when cut (values echoed in errors)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _scrub(message: str) -> str:
    """An error message without object reprs (`<_io.BytesIO object at 0x7f...>`)."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the upload", message)


def read_upload(data: bytes, what: str) -> tuple[Image.Image, list[str]]:
    """Decode an uploaded image (any mode, not yet converted); returns it and notices.

    Corrupt or non-image data (whatever the decoder raises) -> 400; over MAX_DECODE_PIXELS
    once reduced on open (JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale) -> 413, never
    decoded; over MAX_SIDE or MAX_PIXELS -> downscaled (aspect kept) with a notice.
    """
    if not data:
        raise ApiError(400, f"upload is not a readable image: the {what} file is empty")
    notices: list[str] = []
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        scale = min(1.0, MAX_SIDE / max(width, height), math.sqrt(MAX_PIXELS / (width * height)))
        if scale < 1.0:  # JPEG: decode at a reduced scale already
            image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
        if image.width * image.height > MAX_DECODE_PIXELS:
            raise ApiError(
                413,
                f"the {what} is {width}x{height} ({width * height / 1e6:.0f} MP): over the "
                f"{MAX_DECODE_PIXELS / 1e6:.0f} MP this server decodes; downscale it first",
            )
        if image.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSING_ORIENTATIONS:
            width, height = height, width  # as displayed
        image = upright(image)  # the EXIF orientation applied, as the browser shows it
        if scale < 1.0:
            target = (
                min(MAX_SIDE, max(1, round(width * scale))),
                min(MAX_SIDE, max(1, round(height * scale))),
            )
            image = image.resize(target, Image.BICUBIC, reducing_gap=3.0)
            notices.append(
                f"the {what} was {width}x{height}; downscaled to {image.width}x{image.height} "
                f"(limit {MAX_SIDE} px a side, {MAX_PIXELS / 1e6:.0f} MP)"
            )
        image.load()
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"the {what} is too large to decode: {_scrub(str(exc))}") from exc
    except UnidentifiedImageError:
        raise ApiError(
            400, f"upload is not a readable image: {what}: not an image format this server reads"
        ) from None
    except Exception as exc:  # decoders of untrusted data raise many types (NotImplementedError...)
        detail = _scrub(str(exc)) or type(exc).__name__
        raise ApiError(400, f"upload is not a readable image: {what}: {detail}") from exc
    return image, notices


# --------------------------------------------------------------------------- form fields


def _parse_int(name: str, value: str | None, default: int | None) -> int | None:
    if value is None or str(value).strip() == "":
        return default
    try:
        return int(str(value).strip())
    except ValueError:
        raise ApiError(400, f"{name}={value!r}: expected a whole number") from None


def form_options(fields: dict[str, str]) -> DecodingOptions:
    """Form fields named like DecodingOptions' -> options over DEFAULT_DECODING (400 naming
    a bad one)."""
    try:
        options = DEFAULT_DECODING.with_text(fields)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if options.steps > MAX_STEPS:
        raise ApiError(400, f"steps={options.steps}: at most {MAX_STEPS} in the demo")
    return options


async def text_fields(request: Request) -> dict[str, str]:
    """The text fields of a form request (FastAPI has parsed and cached the form already)."""
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    for name in FORM_FIELDS:
        value = fields.get(name, "")
        if len(value) > MAX_FIELD_CHARS:  # no setting is this long; never echo it whole
            raise ApiError(
                400,
                f"{name}={clip(value)!r} ({len(value):,} characters): too long for any "
                f"setting (at most {MAX_FIELD_CHARS})",
            )
    return fields


FormFields = Annotated[dict[str, str], Depends(text_fields)]


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    id: str
    kind: str  # inpaint | outpaint | generate
    seq: int
    options: DecodingOptions
    inputs: dict[str, Any]  # what the worker needs (tensors, n), not sent back
    notices: list[str] = field(default_factory=list)
    status: str = "queued"  # queued | running | done | error | cancelled
    phase: str = "waiting in the queue"
    done_steps: int = 0
    total_steps: int = 0
    error: str | None = None
    result: dict[str, Any] | None = None  # picture URLs, served from `files`
    files: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # shown in params (n, pad)
    stopping: threading.Event = field(default_factory=threading.Event)  # the server's
    cancelled: threading.Event = field(default_factory=threading.Event)  # its client's

    @property
    def params(self) -> dict[str, Any]:
        return {**self.options.as_dict(), **self.extra}

    def retained(self) -> int:
        """Bytes this job holds: its pictures, and its input tensors until it has run."""
        tensors = [t for t in self.inputs.values() if isinstance(t, torch.Tensor)]
        return sum(map(len, self.files.values())) + sum(
            t.numel() * t.element_size() for t in tensors
        )

    def on_phase(self, phase: str | None) -> None:
        """The `maskgit.phases` hook of the worker running this job: the phase for the page;
        ends the job (JobCancelled) when its client cancelled it or the server stops
        (Ctrl-C), so no thread is left inside torch when the process exits."""
        if self.stopping.is_set():
            raise JobCancelled("the server is stopping")
        if self.cancelled.is_set():
            raise JobCancelled("cancelled")
        if phase == DECODING_PHASE:
            phase = (
                f"decoding step {min(self.done_steps + 1, self.total_steps)} of {self.total_steps}"
            )
        if phase is not None:
            self.phase = phase

    def on_step(self, step: DecodeStep) -> None:
        """The decoder's step callback: progress for the page, and a checkpoint."""
        self.done_steps = min(step.step + 1, self.total_steps)
        self.on_phase(DECODING_PHASE if self.done_steps < self.total_steps else None)


class JobQueue:
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
        self.stopping = threading.Event()

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

    def stop(self, timeout: float = 10.0) -> bool:
        """End the running job at its next checkpoint, drop the queued ones, wait for the
        threads (a thread left inside torch at interpreter exit aborts the process); True
        when none is left running."""
        self.stopping.set()
        threads = [t for t in (self._worker, self._load_thread) if t is not None]
        if self._worker is not None and self._worker.is_alive():
            self.queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

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

    def submit(
        self,
        kind: str,
        options: DecodingOptions,
        inputs: dict,
        notices: list[str],
        extra: dict | None = None,
    ) -> Job:
        with self.lock:
            waiting = self._waiting()
            if waiting >= MAX_QUEUED:
                raise ApiError(429, f"the queue is full ({waiting} jobs waiting): try again later")
            job = Job(uuid.uuid4().hex, kind, next(self._seq), options, inputs, notices)
            self._prune(room=job.retained())
            held = self._retained()
            if held + job.retained() > RESULT_BYTES:
                raise ApiError(
                    429,
                    f"the queue holds {held / 1e6:.0f} MB of images (at most "
                    f"{RESULT_BYTES / 1e6:.0f} MB on this server): try again later",
                )
            job.extra = extra or {}
            job.stopping = self.stopping
            self.jobs[job.id] = job
        self.queue.put(job)
        return job

    def cancel(self, job: Job) -> None:
        """A queued job ends at once; a running one at its next checkpoint."""
        with self.lock:
            if job.status == "queued":
                job.status, job.phase, job.error = "cancelled", "cancelled", "cancelled"
                job.finished = time.time()
                job.inputs = {}
            elif job.status == "running":
                job.cancelled.set()
                job.phase = "cancelling"

    def _waiting(self) -> int:
        return sum(job.status == "queued" for job in self.jobs.values())

    def waiting(self) -> int:
        with self.lock:
            return self._waiting()

    def _retained(self) -> int:
        return sum(job.retained() for job in self.jobs.values())

    def retained_bytes(self) -> int:
        """Bytes the job table holds (pictures of finished jobs, inputs of waiting ones)."""
        with self.lock:
            return self._retained()

    def _prune(self, room: int = 0) -> None:
        """Drop finished jobs: those over JOB_TTL_S old, then the oldest while there are over
        KEEP_FINISHED_JOBS or the table holds over RESULT_BYTES - `room` bytes."""
        now = time.time()
        finished = sorted(
            (j for j in self.jobs.values() if j.status in FINISHED), key=lambda j: j.seq
        )
        held = self._retained()
        for index, job in enumerate(finished):
            expired = job.finished is not None and now - job.finished > JOB_TTL_S
            if expired or len(finished) - index > KEEP_FINISHED_JOBS or held + room > RESULT_BYTES:
                held -= job.retained()
                del self.jobs[job.id]

    def prune(self) -> None:
        with self.lock:
            self._prune()

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
        if job.status in ("error", "cancelled"):
            info["error"] = job.error
        if job.status == "done":
            info["result"] = job.result
        return info

    def _work(self) -> None:
        while True:
            try:
                job = self.queue.get(timeout=PRUNE_EVERY_S)
            except queue.Empty:  # idle: expired jobs still go
                self.prune()
                continue
            if job is None or self.stopping.is_set():
                return
            with self.lock:
                if job.status != "queued":  # cancelled while it waited
                    continue
                job.status, job.phase, job.started = "running", "starting", time.time()
            self._run(job)
            self.prune()

    def _run(self, job: Job) -> None:
        try:
            with watched(job.on_phase):
                job.result = run_job(self.model, job)
            job.status, job.phase = "done", "done"
        except JobCancelled as exc:
            job.error = str(exc)
            job.status, job.phase = "cancelled", "cancelled"
            job.files = {}
        except Exception as exc:  # the worker survives every job
            job.error = f"{type(exc).__name__}: {exc}"
            job.status, job.phase = "error", "failed"
            job.files = {}
        finally:
            job.finished = time.time()
            job.inputs = {}


def run_job(model: Any, job: Job) -> dict[str, Any]:
    """Decode a job (progress through `job.on_step`, phases through `maskgit.phases`
    checkpoints: run it inside `watched(job.on_phase)`) and render its result into
    `job.files`."""
    job.total_steps = job.options.steps_to_run
    if job.kind == "generate":
        out = model.generate(job.inputs["n"], job.options, return_steps=True, on_step=job.on_step)
    else:  # inpaint: an image (3, H, W) and its mask (H, W); outpaint: the canvas, its mask
        image, mask = job.inputs["image"], job.inputs["mask"]
        out = model.inpaint(image, mask, job.options, return_steps=True, on_step=job.on_step)
    job.done_steps = job.total_steps
    checkpoint("encoding the result pictures (PNG)")
    pictures = Pictures(job.id, job.inputs.get("icc_profile"))
    result = render_result(model, out, pictures)
    if job.kind != "generate":
        picture = Image.fromarray(job.inputs["image"].permute(1, 2, 0).numpy())
        result["input"] = pictures.add("input", picture)
        result["mask"] = pictures.add("mask", bool_png(job.inputs["mask"].numpy()))
    job.files = pictures.files
    return result


# --------------------------------------------------------------------------- rendering


def render_steps(
    start: np.ndarray, frames: list, pictures: Pictures, name: str
) -> list[dict[str, Any]]:
    """One entry per decoding step: prediction, token mask and map (URLs), counts."""
    steps, before = [], start
    for frame in frames:
        now = np.asarray(frame.token_mask, dtype=bool)
        stem = f"{name}-step{frame.step + 1}"
        steps.append(
            {
                "step": frame.step + 1,
                "image": pictures.add(stem, frame.image),
                "token_mask": pictures.add(f"{stem}-tokens", bool_png(now)),
                "token_map": pictures.add(f"{stem}-map", token_map(start, before, now)),
                "unknown": int(now.sum()),
                "decoded": int((before & ~now).sum()),
            }
        )
        before = now
    return steps


def render_result(model: Any, out: Any, pictures: Pictures) -> dict[str, Any]:
    """An InpaintResult with its steps -> the JSON the page shows (pictures as URLs)."""
    images = []
    for i, picture in enumerate(out.images):
        start = np.asarray(out.token_masks[i], dtype=bool)
        images.append(
            {
                "image": pictures.add(f"image{i}", picture),
                "width": picture.width,  # the size returned (inpaint: the input's)
                "height": picture.height,
                "token_mask": pictures.add(f"image{i}-tokens", bool_png(start)),
                "token_map": pictures.add(f"image{i}-map", token_map(start, start, start)),
                "steps": render_steps(
                    start, out.steps[i] if out.steps else [], pictures, f"image{i}"
                ),
            }
        )
    return {
        "image_size": int(model.image_size),
        "token_grid": int(model.image_size // model.downsample),
        "images": images,
    }


# --------------------------------------------------------------------------- routes


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


DECODING = threading.BoundedSemaphore(DECODE_SLOTS)  # uploads being decoded, all requests


@contextmanager
def decode_slot():
    """Hold one of DECODE_SLOTS while an upload is decoded and converted (bounded memory)."""
    if not DECODING.acquire(timeout=DECODE_WAIT_S):
        raise ApiError(503, "the server is busy decoding other uploads: try again in a moment")
    try:
        yield
    finally:
        DECODING.release()


def _converted(what: str, convert: Callable[[], torch.Tensor]) -> torch.Tensor:
    try:
        return convert()
    except ApiError:
        raise
    except Exception as exc:  # an odd mode or values: the upload's fault, never a 500
        raise ApiError(400, f"{what}: {_scrub(str(exc)) or type(exc).__name__}") from None


def _full_image(upload: UploadFile) -> tuple[torch.Tensor, list[str], bytes | None]:
    """An uploaded image at its own size (uint8 (3, H, W)), notices and its RGB colour
    profile (kept on the results): inpainting and outpainting keep it at that size (the
    model fills a window around the hole, `MaskGIT.inpaint`)."""
    data = _read_file(upload, "image")
    with decode_slot():
        picture, notices = read_upload(data, "image")
        pixels = _converted("image", lambda: image_tensor(picture, None))
        return pixels, notices, colour_profile(picture)


def _full_mask(upload: UploadFile) -> tuple[torch.Tensor, list[str]]:
    """An uploaded mask at its own size (white = repaint, transparent = keep): bool (H, W)."""
    data = _read_file(upload, "mask")
    with decode_slot():
        painted, notices = read_upload(data, "mask")
        return _converted("mask", lambda: mask_tensor(painted, None, "white-repaint")), notices


def _missing(**uploads: UploadFile | None) -> None:
    missing = " and ".join(name for name, upload in uploads.items() if upload is None)
    if missing:
        raise ApiError(400, f"missing upload: {missing} (multipart form fields)")


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's default answers {"detail": ...}; the page reads {"error": ...}
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(
            {"error": _scrub(message)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(  # answered outside the guard: its headers are set here
            {"error": f"internal error: {type(exc).__name__}: {clip(_scrub(str(exc)), 300)}"},
            status_code=500,
            headers=SECURITY_HEADERS,
        )


class BodyTooLarge(StarletteHTTPException):
    """Raised while reading a request body past MAX_REQUEST_BYTES (answered 413)."""


def _too_large(size: str) -> str:
    return (
        f"request of {size} bytes is too large (uploads: at most "
        f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB a file)"
    )


class BodyLimit:
    """ASGI middleware: a request body is cut off at `limit` bytes *while it is read*, whatever
    the transfer encoding (chunked uploads carry no Content-Length), so nothing over the
    limit is ever spooled to disk or memory; the request is answered 413."""

    def __init__(self, app, limit: int = MAX_REQUEST_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(413, _too_large(f"over {self.limit:,}"))
            return message

        await self.app(scope, limited, send)


def host_name(host: str) -> str:
    """The name part of a Host header or URL authority: without port, brackets, case."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:7860
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _origin_authority(origin: str) -> str | None:
    """`scheme://host[:port]` -> `host[:port]` (lower case); None for "null" or junk."""
    match = re.fullmatch(r"https?://([^/?#]+)/?", origin.strip().lower())
    return match.group(1) if match else None


def refused_by_origin(request: Request, allowed: set[str]) -> str | None:
    """Why a request must be refused for its Host or Origin (None: it may go on).

    Host: only the names this server serves (DNS rebinding sends another name); Origin (on
    anything but GET/HEAD/OPTIONS): a page of another site may not queue work here."""
    host = request.headers.get("host", "")
    if host_name(host) not in allowed:
        return f"host {clip(host)!r} is not served here (allowed: {', '.join(sorted(allowed))})"
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    origin = request.headers.get("origin")
    if origin is not None and _origin_authority(origin) != host.strip().lower():
        return f"cross-origin request from {clip(origin)!r} refused"
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "cross-site request refused"
    return None


def add_guard(app: FastAPI, jobs: JobQueue, allowed_hosts: Iterable[str] = LOCAL_HOSTS) -> None:
    """Refuse other sites' requests and oversized ones early; security headers on every
    response (the refusals included), and no caching of the API's answers (a job's answers
    and pictures are the user's images)."""
    allowed = {host_name(h) for h in (*LOCAL_HOSTS, *allowed_hosts) if h}
    app.add_middleware(BodyLimit, limit=MAX_REQUEST_BYTES)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refusal = refused_by_origin(request, allowed)
        length = request.headers.get("content-length")
        if refusal is not None:
            response = JSONResponse({"error": refusal}, status_code=403)
        elif length and length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            response = JSONResponse({"error": _too_large(f"{int(length):,}")}, status_code=413)
        else:
            jobs.start()  # in case the server runs without lifespan events
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response


def add_page_routes(app: FastAPI, jobs: JobQueue, samples: Path) -> None:
    """The page, its static files, samples, health and defaults."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        model = jobs.model
        info: dict[str, Any] = {
            "status": jobs.state,
            "loaded": model is not None,
            "error": jobs.load_error,
            "queued": jobs.waiting(),
            "decoding": DEFAULT_DECODING.as_dict(),
        }
        if jobs.state == "loading":
            info["message"] = LOADING_MESSAGE
        if model is not None:
            info["image_size"] = int(model.image_size)
            info["token_grid"] = int(model.image_size // model.downsample)
            info["device"] = str(getattr(model, "device", "cpu"))
        return info

    @app.get("/api/defaults")
    def defaults() -> dict[str, Any]:
        return DEFAULT_DECODING.as_dict()

    @app.get("/api/samples")
    def get_samples() -> list[dict[str, str]]:
        return list_samples(samples)

    @app.get("/samples/{name}", include_in_schema=False)
    def sample_file(name: str) -> FileResponse:
        if name not in {s["name"] for s in list_samples(samples)}:
            raise ApiError(404, f"no sample named {name!r}")
        return FileResponse(samples / name)


def add_job_routes(app: FastAPI, jobs: JobQueue) -> None:
    """POST a job (inpaint, outpaint, generate); GET its state."""

    def queued(job: Job) -> dict[str, Any]:
        return {"job_id": job.id, "position": jobs.ahead_of(job), "notices": job.notices}

    @app.post("/api/inpaint")
    def inpaint(
        fields: FormFields,
        image: Annotated[UploadFile | None, File()] = None,
        mask: Annotated[UploadFile | None, File()] = None,
    ) -> dict[str, Any]:
        jobs.require_model()
        _missing(image=image, mask=mask)
        options = form_options(fields)
        pixels, notices, profile = _full_image(image)
        repaint, mask_notices = _full_mask(mask)  # white = repaint, transparent = keep
        height, width = pixels.shape[1:]
        if tuple(repaint.shape) != (height, width):  # a pixel is repainted if any part is
            mask_notices.append(
                f"the mask ({repaint.shape[1]}x{repaint.shape[0]}) was fitted to the image "
                f"({width}x{height})"
            )
            repaint = fit_mask(repaint, (height, width))
        if not repaint.any():
            raise ApiError(400, EMPTY_MASK_MESSAGE)
        inputs = {"image": pixels, "mask": repaint, "icc_profile": profile}
        return queued(jobs.submit("inpaint", options, inputs, notices + mask_notices))

    @app.post("/api/outpaint")
    def outpaint(
        fields: FormFields,
        image: Annotated[UploadFile | None, File()] = None,
        pad: FormStr = None,
    ) -> dict[str, Any]:
        jobs.require_model()
        _missing(image=image)
        options = form_options(fields)
        margin = DEFAULT_PAD if pad is None or not str(pad).strip() else str(pad).strip()
        try:
            parse_pad(margin)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        pixels, notices, profile = _full_image(image)
        try:
            placement = outpaint_layout(pixels.shape[2], pixels.shape[1], margin)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        canvas, mask = outpaint_canvas(pixels, placement)
        inputs = {"image": canvas, "mask": mask, "icc_profile": profile}
        job = jobs.submit("outpaint", options, inputs, notices, extra={"pad": margin})
        return queued(job)

    @app.post("/api/generate")
    def generate(fields: FormFields, n: FormStr = None) -> dict[str, Any]:
        jobs.require_model()
        options = form_options(fields)
        count = _parse_int("n", n, 4)
        if not 1 <= count <= MAX_GENERATE:
            raise ApiError(400, f"n={count}: expected 1 to {MAX_GENERATE} images")
        return queued(jobs.submit("generate", options, {"n": count}, [], extra={"n": count}))

    def find(job_id: str) -> Job:
        job = jobs.jobs.get(job_id)
        if job is None:
            raise ApiError(
                404,
                f"no job {clip(job_id)!r}: unknown, or expired (finished jobs are kept "
                f"{JOB_TTL_S / 60:.0f} minutes, fewer when many or large)",
            )
        return job

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return jobs.describe(find(job_id))

    @app.delete("/api/jobs/{job_id}")
    def cancel_job(job_id: str) -> dict[str, Any]:
        job = find(job_id)
        jobs.cancel(job)
        return jobs.describe(job)

    @app.get("/api/jobs/{job_id}/files/{name}")
    def job_file(job_id: str, name: str) -> Response:
        data = find(job_id).files.get(name)
        if data is None:
            raise ApiError(404, f"job {clip(job_id)!r} has no picture {clip(name)!r}")
        return Response(data, media_type="image/png")


def create_app(
    model_path: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    quantize: str | None = None,
    loader: Callable[[], Any] | None = None,
    samples_dir: str | Path | None = None,
    allowed_hosts: Iterable[str] = (),
) -> FastAPI:
    """The demo app. The model (`MaskGIT.from_pretrained(model_path, device, quantize=
    quantize)`, or `loader()` when given, e.g. a slow stand-in in tests) loads in a
    background thread at startup.

    Requests must name one of the hosts served in their Host header: localhost, 127.0.0.1,
    ::1 and `allowed_hosts` (e.g. the --host it listens on); POSTs from another origin are
    refused (403)."""
    if loader is None:

        def loader() -> Any:
            from maskgit.pipeline import MaskGIT

            return MaskGIT.from_pretrained(model_path, device=device, quantize=quantize)

    jobs = JobQueue(loader)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        jobs.start()
        yield
        jobs.stop()

    app = FastAPI(title="MaskGIT demo", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.jobs = jobs
    add_error_handlers(app)
    add_guard(app, jobs, allowed_hosts)
    add_page_routes(app, jobs, Path(samples_dir) if samples_dir is not None else SAMPLES_DIR)
    add_job_routes(app, jobs)
    return app
