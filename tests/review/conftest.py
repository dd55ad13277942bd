import pytest
from review_helpers import write_items

from tunelab.review.auth import add_rater
from tunelab.review.store import ReviewStore
from tunelab.review.tasks import TaskSpec, create_task, load_items_jsonl


@pytest.fixture
def make_task(tmp_path):
    """Create a task with raters in a fresh db; returns (db path, {rater: sign-in token})."""

    def make(name="demo", n=4, raters=("alice", "bob"), k=2, pairwise=False, dims=("correctness", "humour"), variants=()):
        db = tmp_path / "tunelab.db"
        store = ReviewStore(db)
        items = load_items_jsonl(write_items(tmp_path / f"{name}.jsonl", n, pairwise, variants))
        create_task(store, TaskSpec(name, list(dims), (1, 5), k, pairwise), items, "file:test")
        tokens = {r: add_rater(store, name, r, "http://x").rsplit("/", 1)[1] for r in raters}
        store.close()
        return db, tokens

    return make
