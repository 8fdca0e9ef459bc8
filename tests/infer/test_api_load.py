"""`lathe api` under load: 32 concurrent clients x 20 requests, valid, streaming and hostile bodies.

The server is the real command in its own process (so its memory is its own): every valid
request must be answered, every invalid one get a 4xx in OpenAI's error shape, none a 5xx,
and the server's resident memory after the storm must stay within 10% of after warm-up.
The figures are printed for docs/reliability.md.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

KEY = "sk-load-test"
CLIENTS, REQUESTS = 32, 20
HUGE = "word " * 200_000  # a 1 MB prompt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def post(port: int, body: bytes, stream: bool = False) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    text = response.read().decode("utf-8", "replace")
    conn.close()
    return response.status, text


def valid(text: str, stream: bool = False) -> bytes:
    return json.dumps({"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 4,
                       "stream": stream}).encode()


INVALID = {
    "malformed_json": b'{"model": "tiny", "messages": [{"role": "user", ',
    "wrong_types": json.dumps({"model": "tiny", "messages": "hello", "temperature": "hot"}).encode(),
    "empty_messages": json.dumps({"model": "tiny", "messages": []}).encode(),
    "unknown_role": json.dumps({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}).encode(),
    "huge_prompt": valid(HUGE),
}


def request_kind(client: int, k: int) -> str:
    kinds = ["plain", "plain", "stream", "plain", "malformed_json", "stream", "wrong_types", "plain",
             "empty_messages", "unknown_role"]
    return "huge_prompt" if k == REQUESTS - 1 else kinds[(client + k) % len(kinds)]


@pytest.mark.timeout(600)
def test_server_stays_up_and_correct_under_32_concurrent_clients(tmp_path, tiny_llama):
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_llama), "template": "chatml",
                                      "do_sample": False, "max_new_tokens": 4}))
    port = free_port()
    env = {**os.environ, "API_PORT": str(port), "API_KEY": KEY, "API_MODEL_NAME": "tiny"}
    server = subprocess.Popen([sys.executable, "-m", "lathe", "api", str(config)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "the server did not start"
                time.sleep(0.2)
        for k in range(20):  # warm-up: allocator pools, tokenizer caches, threads
            assert post(port, valid(f"warm up {k}"), stream=k % 2 == 1)[0] == 200
        warm = rss_kib(server.pid)

        def one(client: int, k: int) -> tuple[str, int, str]:
            kind = request_kind(client, k)
            if kind in ("plain", "stream"):
                status, text = post(port, valid(f"client {client} request {k}", kind == "stream"))
            else:
                status, text = post(port, INVALID[kind])
            return kind, status, text

        start = time.time()
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(one, c, k) for c in range(CLIENTS) for k in range(REQUESTS)]
            results = [f.result() for f in futures]
        seconds = time.time() - start
        after = rss_kib(server.pid)
        assert server.poll() is None, "the server died"
    finally:
        server.terminate()
        server.wait(timeout=30)

    statuses = Counter((kind, status) for kind, status, _ in results)
    print(f"\n[load] {len(results)} requests in {seconds:.1f} s; statuses {dict(statuses)}; "
          f"RSS after warm-up {warm / 1024:.1f} MiB, after the run {after / 1024:.1f} MiB "
          f"({100 * (after - warm) / warm:+.1f}%)")
    assert not [r for r in results if r[1] >= 500], "no request may get a 5xx"
    for kind, status, text in results:
        if kind == "plain":
            assert status == 200 and json.loads(text)["choices"][0]["message"]["content"] is not None
        elif kind == "stream":
            assert status == 200 and text.rstrip().endswith("data: [DONE]"), text[-200:]
        else:
            assert 400 <= status < 500, (kind, status)
            error = json.loads(text)["error"]
            assert error["message"] and error["type"], error
    assert after <= warm * 1.10, f"RSS grew from {warm} KiB to {after} KiB"
