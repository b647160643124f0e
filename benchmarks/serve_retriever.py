"""Throughput and latency of `searchrl serve retriever` (BM25 over BEIR SciFact) under concurrent clients.

Starts the real server as a subprocess (``searchrl serve retriever --data DIR --port PORT``), then,
side by side in one run:
- ``clients_1`` / ``clients_8`` / ``clients_64``: that many concurrent clients (asyncio tasks, one
  keep-alive connection each, see :class:`Connection`), each sending one query per request — how an agent's search tool
  calls it — for ``--seconds`` each after a short warm-up; queries/s and the p50/p95 latency of a
  request. ``queries_per_search`` is how many queries the server searched per retriever call:
  requests that arrive while the index is busy are merged into one batch search.
- ``one_client_64_queries_per_request``: one client sending Search-R1-style batches of 64
  queries per request (one request is one batch search).
- ``library``: the same BM25 index searched in-process, all queries in one call (no HTTP).

The clients share the machine with the server, so on a small machine the client's own CPU time
is part of what is measured: ``client_cpu_share`` and ``server_cpu_share`` are each process's CPU
seconds per wall second during the setting (1.0 = one core busy). Writes ``benchmarks/results/serve_retriever.json`` and prints it.

    python3 benchmarks/serve_retriever.py [--data DIR] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from searchrl.data.beir import load_corpus, load_queries
from searchrl.paths import shared_data_dir
from searchrl.retrieval import BM25Retriever
from searchrl.serve.http import bind_socket

RESULTS = Path(__file__).resolve().parent / "results" / "serve_retriever.json"
TOPK = 10


def free_port() -> int:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    return port


def start_server(data: Path, port: int) -> subprocess.Popen:
    """`searchrl serve retriever` in a subprocess; returns once ``/health`` answers."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "searchrl", "serve", "retriever", "--data", str(data), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited: {server.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.terminate()
    sys.exit("the server did not start within 120 s")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of process ``pid``."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx's AsyncClient was the bottleneck at 64 connections here (GET /health: 67 requests/s
    through it against 1,338 with this client, same server, same machine), so the load generator
    stays out of the way with this one instead.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        body = json.dumps(payload).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(port: int, queries: list[str], clients: int, seconds: float, per_request: int, warmup: float,
               server_pid: int) -> dict:
    """``clients`` connections sending ``per_request`` queries per request for ``seconds`` (after ``warmup``)."""
    url = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    done_queries = 0  # in the measured window
    all_queries = 0  # warm-up included, to compare with the server's count of searches
    cursor = 0
    before = httpx.get(url + "/health").json()["batch_searches"]
    cpu_before = cpu_seconds(), cpu_seconds(server_pid)
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def worker() -> None:
        nonlocal cursor, done_queries, all_queries
        connection = Connection(port)
        try:
            while True:
                batch = [queries[(cursor + i) % len(queries)] for i in range(per_request)]
                cursor += per_request
                sent = time.perf_counter()
                if sent >= stop:
                    return
                status, body = await connection.post("/retrieve", {"queries": batch, "topk": TOPK, "return_scores": True})
                if status != 200 or len(json.loads(body)["result"]) != per_request:
                    raise RuntimeError(f"bad answer: HTTP {status} {body[:200]!r}")
                all_queries += per_request
                if sent >= measure_from:
                    latencies.append(time.perf_counter() - sent)
                    done_queries += per_request
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - measure_from
    total = time.perf_counter() - start
    cpu_client, cpu_server = cpu_seconds() - cpu_before[0], cpu_seconds(server_pid) - cpu_before[1]
    searches = httpx.get(url + "/health").json()["batch_searches"] - before
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "queries_per_request": per_request,
        "requests": len(latencies),
        "queries_per_s": round(done_queries / elapsed, 1),
        "latency_ms_p50": round(float(np.percentile(ms, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(ms, 95)), 2),
        "queries_per_search": round(all_queries / max(searches, 1), 2),
        "client_cpu_share": round(cpu_client / total, 2),
        "server_cpu_share": round(cpu_server / total, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "scifact")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per setting")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    queries = list(load_queries(args.data / "queries.jsonl").values())
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    port = free_port()
    server = start_server(args.data, port)
    url = f"http://127.0.0.1:{port}"
    startup_s = time.perf_counter() - started
    results: dict = {
        "benchmark": "serve_retriever",
        "setup": {
            "data": str(args.data), "documents": None, "queries": len(queries), "topk": TOPK, "retriever": "bm25",
            "measured_seconds_per_setting": args.seconds, "server_startup_s_incl_indexing": round(startup_s, 2),
            "server_omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
        },
    }
    try:
        results["setup"]["documents"] = httpx.get(url + "/health").json()["num_documents"]
        for clients in (1, 8, 64):
            results[f"clients_{clients}"] = asyncio.run(load(port, queries, clients, args.seconds, 1, args.warmup, server.pid))
            print(f"{clients} clients: {results[f'clients_{clients}']}", file=sys.stderr)
        batched = asyncio.run(load(port, queries, 1, args.seconds, 64, args.warmup, server.pid))
        results["one_client_64_queries_per_request"] = batched
        print(f"batches of 64: {batched}", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)

    corpus = load_corpus(args.data)
    bm25 = BM25Retriever().index(corpus.values(), show_progress=False)
    start = time.perf_counter()
    bm25.search(queries, k=TOPK)
    seconds = time.perf_counter() - start
    results["library"] = {"queries_per_s": round(len(queries) / seconds, 1), "note": "all queries in one search() call"}
    results["machine"] = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "note": "other jobs share the machine: a load average above the CPU count means the server got a fraction of a core",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
