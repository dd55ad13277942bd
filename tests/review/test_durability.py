"""A rating survives `kill -9` of the server: each POST commits before it answers."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from review_helpers import ADMIN
from tunelab.review.store import ReviewStore


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db, port):
    env = dict(os.environ, TUNELAB_REVIEW_ADMIN_TOKEN=ADMIN)
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "review", "serve", "--db", str(db),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stdout.read().decode()}")
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start within 60 s")


def test_ratings_survive_sigkill(make_task):
    db, tokens = make_task(n=3, raters=("alice",), k=1)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(db, port)
    try:
        c = httpx.Client(base_url=base, follow_redirects=True)
        assert c.get(f"/signin/{tokens['alice']}").status_code == 200  # confirmation page
        page = c.post(f"/signin/{tokens['alice']}", headers={"Origin": base})
        assert page.status_code == 200 and "Guidelines" in page.text
        page = c.get("/rate/demo?begin=1")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        url = str(page.url)
        r = c.post(url, data={"dim_0": "3", "dim_1": "5", "comment": "keep me", "csrf": csrf, "action": "submit"})
        assert r.status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = start_server(db, port)
    try:
        # The session itself also survived: the same cookie still works after the restart.
        me = c.get("/api/me").json()
        assert [(x["dimension"], x["score"], x["comment"]) for x in me["ratings"]] == [
            ("correctness", 3.0, "keep me"), ("humour", 5.0, "keep me")]
        admin = httpx.get(f"{base}/api/tasks/demo/ratings", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert len(admin) == 2
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(ReviewStore(db).ratings("demo")) == 2
