"""The local S3 server (moto) with its buckets and objects kept in a folder, so that it can be killed and
started again on the same data: ``python -m tests.reliability.durable_s3 -p PORT --data DIR``.

moto keeps its state in memory only, and its request recorder loses the bodies of chunked uploads (pyarrow's),
so this server wraps moto's WSGI application: after every request that changed something (any method but
GET, HEAD and OPTIONS) and before its response leaves, the buckets are written through to ``DIR`` (one folder
per bucket, one file per object, written to a temporary name and renamed into place). An acknowledged write
therefore survives a SIGKILL; an unacknowledged one may or may not, as on a real store. Unfinished
multipart uploads, object metadata and versions are not kept.

``--hold-after REGEX`` injects a fault: once a write of a key matching ``REGEX`` (``bucket/key``) has been
kept, every later request waits, unanswered, until the process is killed, and the file
``DIR/.held`` names that key. A test kills the server then, in the middle of whatever the client was
writing.
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

HELD_MARKER = ".held"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class DurableStore:
    """Mirror of moto's S3 buckets in a folder: loaded at start, written through after each change."""

    def __init__(self, data_dir: Path, hold_after: str | None = None):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        self.data_dir = data_dir
        self.backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        self.hold_after = re.compile(hold_after) if hold_after else None
        self.held = threading.Event()
        self.lock = threading.Lock()
        self.etags: dict[tuple[str, str], str] = {}

    def load(self) -> int:
        """Create the kept buckets and objects in moto; returns the number of objects."""
        count = 0
        for bucket_dir in sorted(p for p in self.data_dir.iterdir() if p.is_dir()):
            self.backend.create_bucket(bucket_dir.name, os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
            for path in sorted(bucket_dir.iterdir()):
                if path.name.startswith("."):
                    continue
                key = self.backend.put_object(bucket_dir.name, unquote(path.name), path.read_bytes())
                self.etags[(bucket_dir.name, key.name)] = key.etag
                count += 1
        return count

    def sync(self) -> None:
        """Write every changed object, remove deleted objects and buckets."""
        with self.lock:
            current = dict(self.backend.buckets)
            for name, bucket in current.items():
                folder = self.data_dir / name
                folder.mkdir(exist_ok=True)
                keys = {}
                for key_name in list(bucket.keys.keys()):
                    key = bucket.keys.get(key_name)
                    if key is not None and hasattr(key, "value"):
                        keys[key_name] = key
                for key_name, key in keys.items():
                    if self.etags.get((name, key_name)) == key.etag:
                        continue
                    target = folder / quote(key_name, safe="")
                    partial = folder / f".{target.name}.partial"
                    partial.write_bytes(key.value)
                    partial.replace(target)
                    self.etags[(name, key_name)] = key.etag
                    self._maybe_hold(f"{name}/{key_name}")
                for bucket_name, key_name in [k for k in self.etags if k[0] == name and k[1] not in keys]:
                    (folder / quote(key_name, safe="")).unlink(missing_ok=True)
                    del self.etags[(bucket_name, key_name)]
            for folder in self.data_dir.iterdir():
                if folder.is_dir() and folder.name not in current:
                    for path in folder.iterdir():
                        path.unlink()
                    folder.rmdir()
                    self.etags = {k: v for k, v in self.etags.items() if k[0] != folder.name}

    def _maybe_hold(self, location: str) -> None:
        if self.hold_after is not None and not self.held.is_set() and self.hold_after.search(location):
            (self.data_dir / HELD_MARKER).write_text(location + "\n")
            self.held.set()

    def wait_if_held(self) -> None:
        while self.held.is_set():  # until the process is killed
            time.sleep(1)


class DurableApp:
    """WSGI middleware: the response of a changing request leaves only after the change is on disk."""

    def __init__(self, app, store: DurableStore):
        self.app, self.store = app, store

    def __call__(self, environ, start_response):
        self.store.wait_if_held()
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["args"] = (status, headers, exc_info)
            return lambda data: None  # the body is returned, not written

        body = list(self.app(environ, capture))
        if environ.get("REQUEST_METHOD", "GET") not in SAFE_METHODS:
            self.store.sync()
            self.store.wait_if_held()  # this request's own change may be the one that holds
        status, headers, exc_info = captured["args"]
        start_response(status, headers, exc_info)
        return body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--data", required=True, help="folder that keeps the buckets and objects")
    parser.add_argument("--hold-after", default=None, help="REGEX of bucket/key: hold every request after it")
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    data_dir = Path(args.data)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / HELD_MARKER).unlink(missing_ok=True)
    store = DurableStore(data_dir, args.hold_after)
    store.load()
    app = DurableApp(DomainDispatcherApplication(create_backend_app), store)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
