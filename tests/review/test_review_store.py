"""Opening one new review database from several places at once (server and CLI) must not fail."""

import threading

from tunelab.review.store import ReviewStore


def test_concurrent_first_open(tmp_path):
    for trial in range(25):
        errors = []

        def open_it(path=tmp_path / f"new-{trial}.db"):
            try:
                ReviewStore(path).close()
            except Exception as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
