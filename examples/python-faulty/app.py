"""A WSGI app that misbehaves on purpose, for the robustness suite (`tests/robustness.rs`).
Plain WSGI, standard library only (the build still adds the default WSGI server).

  GET  /           -> "ok <pid>"
  GET  /wedge      -> never answers (a request that holds its thread for good)
  GET  /sleep?s=N  -> answers after N seconds
  GET  /crash      -> the worker process exits mid-request
  GET  /segv       -> the worker process segfaults mid-request
  GET  /leak?mb=N  -> keeps N more MiB for good (a leak), answers the worker's total
  GET  /big?mb=N   -> N MiB of b"x", streamed 1 MiB at a time
  POST /upload     -> "<bytes> <sha256>" of the request body, read 1 MiB at a time
"""

import ctypes
import hashlib
import os
import time
from urllib.parse import parse_qs

MIB = 1 << 20
# What /leak keeps: never freed while the worker lives.
hoard = []


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    number = lambda key, default: int(query.get(key, [default])[0])
    if path == "/wedge":
        print(f"wedging in pid {os.getpid()}", flush=True)
        while True:
            time.sleep(60)
    if path == "/sleep":
        time.sleep(number("s", 1))
        return text(start_response, "slept\n")
    if path == "/crash":
        print(f"crashing pid {os.getpid()} on purpose", flush=True)
        os._exit(3)
    if path == "/segv":
        print(f"segfaulting pid {os.getpid()} on purpose", flush=True)
        ctypes.string_at(0)
    if path == "/leak":
        # Non-zero bytes: every page is touched, so the memory is resident.
        hoard.append(b"\x01" * (number("mb", 10) * MIB))
        total = sum(len(chunk) for chunk in hoard) // MIB
        return text(start_response, f"leaked {total} MiB in pid {os.getpid()}\n")
    if path == "/big":
        size = number("mb", 1) * MIB
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
        return (b"x" * MIB for _ in range(size // MIB))
    if path == "/upload":
        digest, total = hashlib.sha256(), 0
        stream = environ["wsgi.input"]
        while True:
            chunk = stream.read(MIB)
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
        return text(start_response, f"{total} {digest.hexdigest()}\n")
    return text(start_response, f"ok {os.getpid()}\n")


def text(start_response, body):
    data = body.encode()
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))]
    )
    return [data]
