"""Several gradio_client users at once against the launched demo: errors, latency per endpoint, server memory.

    python benchmarks/load_test.py                          # 8 users x 20 mixed requests, the shipped models
    python benchmarks/load_test.py --num_users 3 --requests_per_user 3 --output ''   # a quick look, no file

Starts app.py on a free loopback port (its models from GM_HUB_<NAME>_MODEL or pretrained/), warms every
endpoint once, then each user (its own Client, its own thread) sends its requests one after another, cycling
through every endpoint the app serves in its own shuffled order. A response counts as an error when the app
refuses it or when it is not what was asked (an image grid of the wrong size, empty text). Reports p50 and p95
latency per endpoint, and the server's resident memory (Linux /proc) after warm-up, after the run and at its
peak; writes a markdown table with the command and the machine's load average to --output.
"""

import argparse
import os
import random
import shlex
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bad_requests import client, connect, free_port, memory_mb, start_app
from gm_hub.models.ddpm import DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_SCHEDULER

REPO_ROOT = Path(__file__).resolve().parents[1]
CELL = 86  # an 84-pixel upscaled digit and the grid's 2-pixel padding
NUM_IMAGES = 4  # per image request: a 2 x 2 grid


def grid_size(num_columns: int, num_rows: int) -> tuple[int, int]:
    return 2 + num_columns * CELL, 2 + num_rows * CELL


SQUARE = grid_size(2, 2)
SEED = "seed"  # stands for the request's own seed among the arguments
# endpoint -> (arguments, what comes back: a grid size, "text", or "compare" (a grid per image family and a plot)).
REQUESTS = {
    "/sample_vae": ((NUM_IMAGES, SEED, True), SQUARE),
    "/interpolate_vae": ((1, 7, 5), grid_size(5, 1)),
    "/sample_gan": ((NUM_IMAGES, SEED, 0.0), SQUARE),
    "/interpolate_gan": ((SEED, 2, 5, True), grid_size(5, 1)),
    "/sample_realnvp": ((NUM_IMAGES, SEED, 0.7), SQUARE),
    "/sample_glow": ((NUM_IMAGES, SEED, 0.7), SQUARE),
    "/interpolate_realnvp": ((1, 7, 5), grid_size(5, 1)),
    "/interpolate_glow": ((1, 7, 5), grid_size(5, 1)),
    "/sample_pixelcnn": (("any", 1.0, NUM_IMAGES, SEED), SQUARE),
    "/complete_pixelcnn": (("7", None, 14, "any", 2, SEED), grid_size(3, 1)),
    "/sample_ddpm": ((DEFAULT_SCHEDULER, DEFAULT_NUM_INFERENCE_STEPS, 0.0, NUM_IMAGES, SEED), SQUARE),
    "/generate_text": (("All:\n", 64, 0.8, 0, 1.0, 1.0, SEED), "text"),
    "/compare": ((NUM_IMAGES, SEED), "compare"),
}


@dataclass
class Result:
    endpoint: str
    seconds: float
    error: str | None


def check(result, expected) -> str | None:
    """None when `result` is what `expected` describes, else what is wrong."""
    from PIL import Image

    if expected == "text":
        return None if isinstance(result, str) and result.strip() else f"empty text: {result!r}"
    if expected == "compare":
        *outputs, plot = result
        sizes = {Image.open(path).size for path in outputs[0::2]}
        return None if sizes == {SQUARE} and plot is not None else f"compare grids of sizes {sizes}"
    size = Image.open(result[0]).size
    return None if size == expected else f"grid of {size}, expected {expected}"


def one_request(user, endpoint: str, seed: int) -> Result:
    arguments, expected = REQUESTS[endpoint]
    arguments = tuple(seed if argument == SEED else argument for argument in arguments)
    start = time.perf_counter()
    try:
        error = check(user.predict(*arguments, api_name=endpoint), expected)
    except Exception as err:  # an error of any kind is a figure to report, not a crash of the benchmark
        error = f"{type(err).__name__}: {err}"
    return Result(endpoint, time.perf_counter() - start, error)


def served_endpoints(url: str) -> list[str]:
    """The endpoints of REQUESTS that the app serves (a family without a model has none)."""
    named = client(url).view_api(print_info=False, return_format="dict")["named_endpoints"]
    return [endpoint for endpoint in REQUESTS if endpoint in named]


def run_load(url: str, num_users: int = 8, requests_per_user: int = 20, seed: int = 0) -> list[Result]:
    """Every user sends `requests_per_user` requests at once with the others; returns every request's result."""
    endpoints = served_endpoints(url)
    users = [client(url) for _ in range(num_users)]
    results, lock = [], threading.Lock()

    def user_session(index: int) -> None:
        order = random.Random(seed + index).sample(endpoints, len(endpoints))
        for number in range(requests_per_user):
            result = one_request(users[index], order[number % len(order)], seed + index * requests_per_user + number)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=user_session, args=(index,)) for index in range(num_users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def report(results: list[Result], command: str, wall_seconds: float, memory: dict[str, float],
           load_before: tuple, load_after: tuple) -> str:
    lines = ["# The demo under load", "", "```bash", command, "```", "",
             f"{len({r.endpoint for r in results})} endpoints, {len(results)} requests in {wall_seconds:.0f} s "
             f"on {os.cpu_count()} CPU cores; load average (1, 5, 15 min) "
             f"{', '.join(f'{v:.1f}' for v in load_before)} before and {', '.join(f'{v:.1f}' for v in load_after)} "
             "after (the run's own load included; other jobs may share the machine). The app runs one slow "
             "event (DDPM, PixelCNN, GPT, Compare) and one fast event at a time, so latency includes the wait behind "
             "other users.", "",
             "| endpoint | requests | errors | p50 (s) | p95 (s) | max (s) |", "|---|---|---|---|---|---|"]
    for endpoint in dict.fromkeys(r.endpoint for r in sorted(results, key=lambda r: list(REQUESTS).index(r.endpoint))):
        times = sorted(r.seconds for r in results if r.endpoint == endpoint)
        errors = sum(1 for r in results if r.endpoint == endpoint and r.error)
        p50, p95 = (statistics.quantiles(times, n=100, method="inclusive")[q - 1] if len(times) > 1 else times[0]
                    for q in (50, 95))
        lines.append(f"| {endpoint} | {len(times)} | {errors} | {p50:.2f} | {p95:.2f} | {times[-1]:.2f} |")
    errors = [r for r in results if r.error]
    lines += ["", f"Errors: {len(errors)} of {len(results)}."]
    lines += [f"- {r.endpoint}: {r.error}" for r in errors[:10]]
    lines += ["", f"Server resident memory: {memory['warm']:.0f} MB after warm-up, {memory['after']:.0f} MB after "
              f"the run (ratio {memory['after'] / memory['warm']:.2f}), peak {memory['peak']:.0f} MB."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_users", type=int, default=8)
    parser.add_argument("--requests_per_user", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "load_test_results.md"),
                        help="markdown file to write ('' for none)")
    args = parser.parse_args()
    port = free_port()
    server = start_app(port)
    try:
        url = f"http://127.0.0.1:{port}/"
        warm_up = connect(port, server)
        for endpoint in served_endpoints(url):  # loads every model and compiles nothing later
            one_request(warm_up, endpoint, args.seed)
        memory = {"warm": memory_mb(server.pid)}
        load_before = os.getloadavg()
        start = time.perf_counter()
        results = run_load(url, args.num_users, args.requests_per_user, args.seed)
        wall_seconds = time.perf_counter() - start
        memory.update(after=memory_mb(server.pid), peak=memory_mb(server.pid, "VmHWM"))
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait(timeout=30)
    command = "python benchmarks/load_test.py " + shlex.join(
        [f"--num_users={args.num_users}", f"--requests_per_user={args.requests_per_user}"])
    text = report(results, command, wall_seconds, memory, load_before, load_after)
    print(text)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
