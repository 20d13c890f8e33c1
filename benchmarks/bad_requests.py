"""Fire a battery of malformed and oversized requests at the running demo and report that it kept serving.

    python benchmarks/bad_requests.py                  # starts app.py on a free loopback port, then the battery
    python benchmarks/bad_requests.py --rounds 3       # the battery three times

Every request goes to 127.0.0.1 only. After each bad request one normal request must succeed; the app's
resident memory is read before and after the battery (from /proc, Linux). Prints a markdown table: each kind
of bad request, how many were sent, how many the app refused with a message, how many normal requests
failed after them (must be 0), and the slowest refusal.
"""

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# (label, endpoint, arguments): arguments a browser can't send but any HTTP client can.
BATTERY = [
    ("count far above the limit", "/sample_vae", (10**9, 0, True)),
    ("negative count", "/sample_vae", (-5, 0, True)),
    ("fractional count", "/sample_vae", (2.5, 0, True)),
    ("seed beyond 64 bits", "/sample_vae", (4, 2**80, True)),
    ("negative seed", "/sample_gan", (4, -1, 0.0)),
    ("truncation far above the slider", "/sample_gan", (4, 0, 1e6)),
    ("tiny truncation (once an endless loop)", "/sample_gan", (16, 0, 1e-12)),
    ("interpolation with a million steps", "/interpolate_gan", (1, 2, 10**6, True)),
    ("digit index out of range", "/interpolate_vae", (1, 700, 5)),
    ("1 MB prompt", "/generate_text", ("x" * 1_000_000, 16, 0.8, 0, 1.0, 1.0, 0)),
    ("a million new tokens", "/generate_text", ("ROMEO:", 10**6, 0.8, 0, 1.0, 1.0, 0)),
    ("temperature 1e9", "/generate_text", ("ROMEO:", 16, 1e9, 0, 1.0, 1.0, 0)),
    ("characters outside the vocabulary", "/generate_text", ("\u2603\u00e9\u4e2d", 16, 0.8, 0, 1.0, 1.0, 0)),
    ("wrong type for a count", "/sample_vae", ("sixteen", 0, True)),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def start_app(port: int, models: dict[str, str] | None = None) -> subprocess.Popen:
    """app.py on 127.0.0.1:port; `models` maps family names to folders (GM_HUB_<NAME>_MODEL)."""
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SSR_MODE": "false", "HF_HUB_OFFLINE": "1",
           **{f"GM_HUB_{name.upper()}_MODEL": folder for name, folder in (models or {}).items()}}
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False)


def connect(port: int, server: subprocess.Popen, timeout: float = 120.0):
    """A Client of the app once it answers; SystemExit if it exits or takes longer than `timeout` seconds."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app exited while starting (code {server.returncode})")
        try:
            return client(f"http://127.0.0.1:{port}/")
        except (httpx.HTTPError, OSError, ValueError):  # not listening yet
            time.sleep(0.5)
    raise SystemExit(f"the app did not start within {timeout:.0f} s")


def normal_request(client) -> None:
    grid, _ = client.predict(4, 0, True, api_name="/sample_vae")
    assert Path(grid).is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="times to send the whole battery")
    args = parser.parse_args()
    from gradio_client.exceptions import AppError

    port = free_port()
    server = start_app(port)
    try:
        client = connect(port, server)
        normal_request(client)  # warm: models loaded
        memory_before = memory_mb(server.pid)
        rows = []
        for label, endpoint, arguments in BATTERY:
            sent = refused = failures = 0
            slowest = 0.0
            for _ in range(args.rounds):
                sent += 1
                start = time.perf_counter()
                try:
                    result = client.predict(*arguments, api_name=endpoint)
                    if endpoint == "/generate_text":
                        assert len(result) < 100_000  # new text only, never the prompt echoed back
                except AppError:
                    refused += 1
                slowest = max(slowest, time.perf_counter() - start)
                try:
                    normal_request(client)
                except (AppError, AssertionError, OSError):
                    failures += 1
            rows.append((label, sent, refused, failures, slowest))
        memory_after = memory_mb(server.pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("| bad request | sent | refused with a message | normal requests failed after it | slowest answer (s) |")
    print("|---|---|---|---|---|")
    for label, sent, refused, failures, slowest in rows:
        print(f"| {label} | {sent} | {refused} | {failures} | {slowest:.2f} |")
    print(f"\nApp still serving: {alive and not any(row[3] for row in rows)}. "
          f"Resident memory: {memory_before:.0f} MB after warm-up, {memory_after:.0f} MB after the battery "
          f"(ratio {memory_after / memory_before:.2f}).")


if __name__ == "__main__":
    main()
