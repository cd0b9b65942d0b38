"""Issue #17, the web server: bounded decoding, body limit while reading, Host/Origin checks,
`maskgit serve` on a busy port and under Ctrl-C, no 500 for any upload, JSON errors.

Real servers on loopback: uvicorn in a thread (tests/test_web_api.py's helpers) or
`maskgit serve` in a subprocess (peak RSS, signals). The table of cases is docs/reliability.md.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from extras import require_extra
from tiny_model import write_tiny_model

uvicorn = require_extra("uvicorn", module_level=True)

import maskgit.app as app_module  # noqa: E402
from maskgit.app import ApiError, create_app, read_upload  # noqa: E402
from test_web_api import (  # noqa: E402
    centre_mask,
    make_image,
    png,
    request,
    running_server,
    submit_inpaint,
    wait_job,
    wait_ready,
)

SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def base(model_dir):
    with running_server(create_app(str(model_dir), device="cpu")) as url:
        assert wait_ready(url)["status"] == "ready"
        yield url


def raw_request(base: str, method: str, path: str, body=None, headers=None):
    """(status, JSON) with full control of the headers (Host included)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        headers = {"Host": f"{host}:{port}", **(headers or {})}
        for key, value in headers.items():
            conn.putheader(key, value)
        if isinstance(body, list):  # chunked: no Content-Length
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for chunk in body:
                    conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before the end: read its answer
        else:
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    for name, data in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- 6: Host, Origin


def test_other_hosts_and_cross_origin_posts_are_refused(base):
    body, kind = multipart({"n": "1", "steps": "2"}, {})
    # DNS rebinding: the page of evil.example resolved to 127.0.0.1
    status, answer = raw_request(
        base, "POST", "/api/generate", body, {"Host": "evil.example", "Content-Type": kind}
    )
    assert status == 403 and "evil.example" in answer["error"], answer
    status, answer = raw_request(base, "GET", "/api/health", None, {"Host": "evil.example:80"})
    assert status == 403, answer
    # a page of another site posting to the real host
    headers = {"Origin": "http://evil.example", "Content-Type": kind}
    status, answer = raw_request(base, "POST", "/api/generate", body, headers)
    assert status == 403 and "cross-origin" in answer["error"], answer
    # the page itself (same origin), and tools that send no Origin, are served
    headers = {"Origin": base, "Content-Type": kind}
    assert raw_request(base, "POST", "/api/generate", body, headers)[0] == 200
    assert raw_request(base, "POST", "/api/generate", body, {"Content-Type": kind})[0] == 200
    assert raw_request(base, "GET", "/api/health", None, {"Host": "localhost"})[0] == 200


def test_allowed_hosts_are_configurable(model_dir):
    app = create_app(str(model_dir), device="cpu", allowed_hosts=["demo.lan"])
    with running_server(app) as url:
        assert raw_request(url, "GET", "/api/health", None, {"Host": "demo.lan:7860"})[0] == 200
        assert raw_request(url, "GET", "/api/health", None, {"Host": "other.lan"})[0] == 403


# --------------------------------------------------------------------------- 5: body limit


def test_chunked_body_over_the_limit_is_cut_off_while_read(base):
    """Three files of 15 MB each (each under the per-file limit, together over the request
    limit), sent chunked without Content-Length: refused 413 once the limit is passed, not
    spooled whole and then decoded."""
    part = b"\xff" * (15 * 1024 * 1024)
    body, kind = multipart({}, {"image": part, "mask": part, "other": part})
    assert len(body) > app_module.MAX_REQUEST_BYTES
    chunks = [body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)]
    status, answer = raw_request(base, "POST", "/api/inpaint", chunks, {"Content-Type": kind})
    assert status == 413 and "too large" in answer["error"], answer
    assert request("GET", f"{base}/api/health")[0] == 200


# --------------------------------------------------------------------------- 12: JSON errors


def test_every_error_is_json_error(base):
    for method, path in (("GET", "/no/such/page"), ("DELETE", "/api/health")):
        status, answer = raw_request(base, method, path)
        assert status in (404, 405) and set(answer) == {"error"}, answer
    status, answer = raw_request(
        base, "POST", "/api/inpaint", b"{not a form", {"Content-Type": "multipart/form-data"}
    )
    assert 400 <= status < 500 and set(answer) == {"error"}, answer


def test_no_heap_address_in_error_messages(base):
    status, answer = submit_inpaint(base, b"this is not an image at all", png(centre_mask()))
    assert status == 400, answer
    assert "0x" not in answer["error"] and "object at" not in answer["error"], answer


# --------------------------------------------------------------------------- 10: no 500


def malformed_dds() -> bytes:
    header = bytearray(128)
    header[0:4] = b"DDS "
    header[4:8] = (124).to_bytes(4, "little")
    header[12:16] = (16).to_bytes(4, "little")  # height
    header[16:20] = (16).to_bytes(4, "little")  # width
    header[76:80] = (32).to_bytes(4, "little")  # pixel format size
    header[80:84] = (0x4).to_bytes(4, "little")  # DDPF_FOURCC
    header[84:88] = b"ZZZZ"  # an unknown compression
    return bytes(header) + b"\0" * 64


def test_malformed_dds_upload_is_400(base):
    status, answer = submit_inpaint(base, malformed_dds(), png(centre_mask()))
    assert status == 400 and "not a readable image" in answer["error"], answer
    assert request("GET", f"{base}/api/health")[0] == 200


def sample_files() -> dict[str, bytes]:
    """One small image in every format Pillow writes here (the fuzzer's seeds)."""
    from PIL import features  # noqa: F401

    Image.init()
    picture = Image.fromarray(make_image(16))
    seeds: dict[str, bytes] = {"DDS-bad": malformed_dds()}
    for fmt in sorted(set(Image.SAVE)):
        for mode in ("RGB", "L", "RGBA", "1", "P"):
            buffer = io.BytesIO()
            try:
                picture.convert(mode).save(buffer, format=fmt)
            except Exception:
                continue
            seeds[fmt] = buffer.getvalue()
            break
    return seeds


SEEDS = sample_files()


def check_upload(data: bytes) -> None:
    """An upload is decoded or refused with 400/413, whatever the bytes."""
    try:
        picture, _ = read_upload(data, "image")
        app_module.image_tensor(picture, 16)
        app_module.mask_tensor(picture, 16, "white-repaint")
    except ApiError as exc:
        assert exc.status in (400, 413), exc.message
        assert "0x" not in exc.message, exc.message
    except ValueError:
        pass  # odd modes or values: the routes answer these 400 (see _converted)


def test_seeds_cover_many_formats():
    assert len(SEEDS) >= 15, sorted(SEEDS)


def test_fuzz_the_upload_reader_across_formats():
    """A bounded, seeded hypothesis run: every Pillow format's file with bytes changed,
    cut or inserted never raises anything but ApiError 400/413 (no 500)."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    names = sorted(SEEDS)

    @hypothesis.settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=list(hypothesis.HealthCheck),  # slow under load is fine
    )
    @hypothesis.given(
        name=st.sampled_from(names),
        edits=st.lists(
            st.tuples(st.integers(0, 4095), st.integers(0, 255), st.sampled_from("sci")),
            max_size=6,
        ),
        cut=st.integers(0, 4096),
    )
    def run(name, edits, cut):
        data = bytearray(SEEDS[name])
        for offset, value, how in edits:
            if not data:
                break
            at = offset % len(data)
            if how == "s":
                data[at] = value
            elif how == "i":
                data[at:at] = bytes([value]) * 4
            else:
                del data[at : at + value // 16 + 1]
        if cut:
            data = data[: max(1, len(data) - cut % max(1, len(data)))]
        check_upload(bytes(data))

    run()


# --------------------------------------------------------------------------- 4: decoding bounded


def test_uploads_are_decoded_a_few_at_a_time(base, monkeypatch):
    active, peak, lock = [0], [0], threading.Lock()
    real = app_module.read_upload

    def counting(data, what):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.2)
            return real(data, what)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(app_module, "read_upload", counting)
    answers = []

    def client():
        answers.append(submit_inpaint(base, png(make_image(16)), png(centre_mask()))[0])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == [200] * 8
    assert peak[0] <= app_module.DECODE_SLOTS, peak


# The peak RSS of the server process itself: VmHWM. (getrusage's ru_maxrss is the same
# counter but, in a child, also carries the RSS the parent had when it forked: Linux records
# the replaced memory map's peak at exec, so a large pytest process would hide any growth.)
SERVE = """
import sys
from maskgit.cli import main
code = main(sys.argv[1:])
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print("peak-rss-kib", hwm[0].split()[1] if hwm else "0", file=sys.stderr)
sys.exit(code)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(model_dir: Path, port: int, script: str = SERVE) -> subprocess.Popen:
    """`maskgit serve` of `model_dir` on 127.0.0.1:`port`, run by `script` (python -c)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    argv = ["serve", "--model", str(model_dir), "--port", str(port), "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-c", script, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_serving(process: subprocess.Popen, base: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if request("GET", f"{base}/api/health")[1]["status"] == "ready":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("maskgit serve did not become ready")


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A 7900 x 7900 RGBA PNG of a few hundred kB (62 MP: ~250 MB once decoded)."""
    buffer = io.BytesIO()
    Image.new("RGBA", (7900, 7900), (10, 20, 30, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_a_huge_png_is_refused_without_decoding_it(model_dir, huge_png):
    """Peak RSS of the server (VmHWM at its exit) barely moves for a 7900x7900 upload;
    and Ctrl-C (SIGINT) then ends `maskgit serve` cleanly."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_serve(model_dir, port)
    try:
        wait_serving(process, base)
        status, answer = submit_inpaint(base, png(make_image(16)), png(centre_mask()))
        assert wait_job(base, answer["job_id"])["status"] == "done"  # warmed up
        before = peak_kib(process.pid)
        status, answer = submit_inpaint(base, huge_png, png(centre_mask()))
        assert status == 413 and "7900x7900" in answer["error"], answer
    finally:
        code, err = stop(process)
    assert code in (0, 130), err
    peak = int(err.split("peak-rss-kib")[-1].split()[0])
    assert (peak - before) / 1024 < 100, f"peak RSS grew by {(peak - before) / 1024:.0f} MiB"


def test_serve_on_a_busy_port_is_one_line_and_exit_2(model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = start_serve(model_dir, port)
        _, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line and not line.startswith("peak-rss")]
    assert process.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("maskgit: error: "), err
    assert str(port) in lines[0]


def test_ctrl_c_while_a_job_runs_ends_cleanly(model_dir):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_serve(model_dir, port)
    try:
        wait_serving(process, base)
        body, kind = multipart({"n": "16", "steps": "64"}, {})
        for _ in range(3):
            status, answer = raw_request(
                base, "POST", "/api/generate", body, {"Content-Type": kind}
            )
            assert status == 200, answer
        deadline = time.time() + 60
        while request("GET", f"{base}/api/health")[1]["queued"] > 2 and time.time() < deadline:
            time.sleep(0.01)  # the first job has left the queue: it is running
    finally:
        code, err = stop(process)
    assert code in (0, 130), err
    assert "terminate called" not in err and "Traceback" not in err, err
