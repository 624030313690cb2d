#!/usr/bin/env python3
"""Issue 11's benchmarks in one run (spec/SCALE.md): parts on one machine, object storage
against the peers on the same S3 server, and the cost of absent chunks.

usage: python3 bench/scale.py [--data DIR] [--runs N] [--parts a,b,c,d] [--server moto|s3s]

(a) W3 (gaussian sigma 2 on the peers' 1 GiB input.zarr): one process with 2 threads against
    2 processes of 1 thread each (`--partition 0/2` and `1/2` started together); wall clock of
    the whole, interleaved N times.
(b) S3 (a server on 127.0.0.1, started here): W1 convert of the first 128 slices of V
    (256 MiB uint16, .npy) into s3://, and W2 stats reading it back, through chunkwise, through
    tensorstore's s3 kvstore and through zarr-python (s3fs), same server, same run.
    `--server moto` (default): moto_server, a Python server holding objects in memory, whose
    own speed bounds every client. `--server s3s`: s3s-fs (a Rust S3 server over a directory,
    `cargo install s3s-fs@0.14.1 --features binary`; its binary from $S3S_FS), on /dev/shm.
(d) append --partition: W5 (64 slices appended to the 512-slice input.zarr) in one process with
    2 threads against 2 parts of 1 thread each started together; and the S3 append of the same
    slices onto the 128-slice S3 store of (b).
(c) A job and a reduction over a 8192x16384x16384 uint8 store (2 TiB, 2^20 chunks of 128^3,
    10 stored): seconds, microseconds per chunk, peak RSS.

Run with the test venv's Python (it has tensorstore, zarr, s3fs, moto): .venv/bin/python.
Results go to bench/results/scale.jsonl and are printed.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from w1 import CW, machine, timed  # noqa: E402
import chart  # noqa: E402

RESULTS = os.path.join(HERE, "results", "scale.jsonl")


def record(row):
    row["machine"] = machine()
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    chart.after_append(RESULTS)


def part_a(data, runs, work):
    inp = os.path.join(data, "input.zarr")
    one, two = [], []
    for r in range(runs):
        out = os.path.join(work, "w3-one.zarr")
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = timed([CW, "--threads", "2", "gaussian", inp, out, "--sigma", "2", "-q"])
        one.append(wall)
        out = os.path.join(work, "w3-parts.zarr")
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        ps = [subprocess.Popen([CW, "--threads", "1", "gaussian", inp, out, "--sigma", "2",
                                "--partition", f"{i}/2", "-q"]) for i in range(2)]
        codes = [p.wait() for p in ps]
        two.append(time.perf_counter() - t)
        assert codes == [0, 0], codes
        assert os.path.exists(os.path.join(out, "zarr.json"))
    record({"part": "a", "workload": "W3", "one_process_2_threads_s": [round(x, 2) for x in one],
            "two_parts_1_thread_s": [round(x, 2) for x in two],
            "ratio_parts_over_one": round(statistics.median(two) / statistics.median(one), 3)})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind, work):
    """An S3 server on 127.0.0.1 with a bucket `bench`: (process, endpoint, its name)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if kind == "s3s":
        binary = os.environ.get("S3S_FS", "/tmp/s3s-inst/bin/s3s-fs")
        root = tempfile.mkdtemp(prefix="cw-s3s-", dir="/dev/shm")
        os.makedirs(os.path.join(root, "bench"))
        proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port),
                                 "--access-key", "testing", "--secret-key", "testing", root],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "s3s-fs 0.14.1 on /dev/shm"
    else:
        server = os.path.join(os.path.dirname(sys.executable), "moto_server")
        proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "moto 5.2.5"
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    if kind != "s3s":
        urllib.request.urlopen(urllib.request.Request(endpoint + "/bench", method="PUT"))
    return proc, endpoint, name


def part_b(data, runs, work, server="moto"):
    import numpy as np
    moto, endpoint, server_name = start_server(server, work)
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
               AWS_DEFAULT_REGION="us-east-1", AWS_ALLOW_HTTP="true")
    os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                           "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                           "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP")})
    v = np.load(os.path.join(data, "volume.npy"), mmap_mode="r")[:128]
    src = os.path.join(work, "v128.npy")
    np.save(src, np.ascontiguousarray(v))
    x = np.load(src)
    codec = ["--codec", "zstd", "--level", "3"]
    rows = {"cw_convert": [], "ts_write": [], "zarr_write": [], "cw_stats": [], "ts_stats": [],
            "zarr_stats": []}
    import tensorstore as ts
    import zarr

    def ts_spec(path):
        return {"driver": "zarr3",
                "kvstore": {"driver": "s3", "bucket": "bench", "path": path + "/",
                            "endpoint": endpoint, "aws_region": "us-east-1"}}

    for r in range(runs):
        url = f"s3://bench/cw{r}.zarr"
        t = time.perf_counter()
        subprocess.run([CW, "convert", src, "-o", url, "--chunks", "128,128,128", "-q"] + codec,
                       check=True, env=env)
        rows["cw_convert"].append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([CW, "stats", url, "--json"], check=True, env=env, capture_output=True)
        rows["cw_stats"].append(time.perf_counter() - t)
        # tensorstore: the same array (zstd 3, 128^3 chunks) written from memory, then read.
        t = time.perf_counter()
        arr = ts.open(ts_spec(f"ts{r}.zarr"), create=True, dtype=ts.uint16, shape=x.shape,
                      chunk_layout=ts.ChunkLayout(chunk_shape=[128, 128, 128]),
                      codec=ts.CodecSpec({"driver": "zarr3", "codecs": [
                          {"name": "bytes", "configuration": {"endian": "little"}},
                          {"name": "zstd", "configuration": {"level": 3}}]})).result()
        arr.write(x).result()
        rows["ts_write"].append(time.perf_counter() - t)
        t = time.perf_counter()
        y = ts.open(ts_spec(f"ts{r}.zarr")).result().read().result()
        s = (int(y.min()), int(y.max()), int(y.sum(dtype=np.uint64)), float(y.mean()), float(y.std()))
        rows["ts_stats"].append(time.perf_counter() - t)
        # zarr-python through s3fs.
        t = time.perf_counter()
        z = zarr.create_array(f"s3://bench/zp{r}.zarr", shape=x.shape, chunks=(128, 128, 128),
                              dtype=x.dtype, compressors=zarr.codecs.ZstdCodec(level=3),
                              zarr_format=3, overwrite=True)
        z[...] = x
        rows["zarr_write"].append(time.perf_counter() - t)
        t = time.perf_counter()
        y = zarr.open_array(f"s3://bench/zp{r}.zarr", mode="r")[...]
        s2 = (int(y.min()), int(y.max()), int(y.sum(dtype=np.uint64)), float(y.mean()), float(y.std()))
        rows["zarr_stats"].append(time.perf_counter() - t)
        assert s == s2
    moto.kill()
    med = {k: statistics.median(v) for k, v in rows.items()}
    record({"part": "b", "volume": "V[:128] 128x1024x1024 uint16 (256 MiB)", "server": server_name,
            **{k: [round(x, 2) for x in v] for k, v in rows.items()},
            "ratio_convert_best_peer_over_cw": round(min(med["ts_write"], med["zarr_write"]) / med["cw_convert"], 2),
            "ratio_stats_best_peer_over_cw": round(min(med["ts_stats"], med["zarr_stats"]) / med["cw_stats"], 2)})


def part_c(work):
    py = os.path.join(ROOT, ".venv", "bin", "python")
    big = os.path.join(work, "big.zarr")
    subprocess.run([py, "-c", f"""
import chunkwise as cw
a = cw.create({big!r}, (8192, 16384, 16384), 'uint8', chunks=(128, 128, 128))
a[1000:1100, 5000:5200, 300:400] = 7
a[8000:8100, 0:100, 16300:16384] = 9
"""], check=True)
    out = {}
    for name, cmd in [
        ("threshold", [CW, "threshold", big, os.path.join(work, "t.zarr"), "--above", "3", "-q"]),
        ("gaussian", [CW, "gaussian", big, os.path.join(work, "g.zarr"), "--sigma", "1", "-q"]),
        ("stats", [CW, "stats", big, "--json"]),
    ]:
        wall, rss = timed(cmd)
        out[name] = {"seconds": round(wall, 2), "us_per_chunk": round(wall * 1e6 / 2**20, 2),
                     "peak_rss_mib": round(rss, 1)}
    record({"part": "c", "array": "8192x16384x16384 uint8, 2^20 chunks of 128^3, 10 stored", **out})


def part_d(data, runs, work, server="moto"):
    """append --partition against one process; and an append onto an S3 store."""
    src = os.path.join(data, "input.zarr")
    raw = os.path.join(data, "append.raw")
    meta = json.load(open(os.path.join(data, "append.json")))
    shape = ",".join(str(n) for n in meta["shape"])
    dtype = meta["dtype"]
    rows = {"one_2threads": [], "two_parts_1thread": [], "s3_append": []}
    for r in range(runs):
        for kind in ("one", "parts"):
            t = os.path.join(work, f"ap-{kind}.zarr")
            shutil.rmtree(t, ignore_errors=True)
            subprocess.run(["cp", "-al", src, t], check=True)
            base = [CW, "append", t, raw, "--dtype", dtype, "--shape", shape, "-q"]
            start = time.perf_counter()
            if kind == "one":
                subprocess.run([CW, "--threads", "2"] + base[1:], check=True)
                rows["one_2threads"].append(time.perf_counter() - start)
            else:
                ps = [subprocess.Popen([CW, "--threads", "1"] + base[1:] +
                                       ["--partition", f"{i}/2"]) for i in range(2)]
                assert all(p.wait() == 0 for p in ps)
                rows["two_parts_1thread"].append(time.perf_counter() - start)
            shutil.rmtree(t)
    proc, endpoint, name = start_server(server, work)
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")
    import numpy as np
    v = np.load(os.path.join(data, "volume.npy"), mmap_mode="r")[:128]
    v128 = os.path.join(work, "v128.npy")
    np.save(v128, np.ascontiguousarray(v))
    for r in range(runs):
        url = f"s3://bench/ap{r}.zarr"
        subprocess.run([CW, "convert", v128, "-o", url, "--chunks", "128,128,128", "-q",
                        "--codec", "zstd", "--level", "3"], check=True, env=env)
        start = time.perf_counter()
        subprocess.run([CW, "append", url, raw, "--dtype", dtype, "--shape", shape, "-q"],
                       check=True, env=env)
        rows["s3_append"].append(time.perf_counter() - start)
    proc.kill()
    med = {k: statistics.median(v) for k, v in rows.items()}
    record({"part": "d", "work": f"W5: append {meta['shape']} {dtype} onto input.zarr",
            "server": name, **{k: [round(x, 2) for x in v] for k, v in rows.items()},
            "ratio_parts_over_one": round(med["two_parts_1thread"] / med["one_2threads"], 2)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--server", default="moto", choices=["moto", "s3s"])
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cw-scale-", dir=os.environ.get("BENCH_TMP", "/tmp"))
    try:
        for p in a.parts.split(","):
            {"a": lambda: part_a(a.data, a.runs, work),
             "b": lambda: part_b(a.data, a.runs, work, a.server),
             "c": lambda: part_c(work),
             "d": lambda: part_d(a.data, a.runs, work, a.server)}[p]()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
