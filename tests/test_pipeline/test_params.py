"""pipeline.params.ClusteringParams: one constraint table, validated once, one run id."""

import numpy as np
import pytest

import pipeline
from pipeline.baselines import random_clustering
from pipeline.params import ClusteringParams


@pytest.mark.parametrize("name,bad", [
    ("rank", 0), ("rank", 2.5), ("rank", True), ("eps", 0.0), ("eps", 1.0), ("eps", "0.1"), ("method", "exact"),
    ("order", "random"), ("oversampling", -1), ("patience", 0), ("tol", 1.0), ("tol", -1e-3), ("shard_size", 1),
    ("merge_neighbours", 0), ("batch_bytes", 0),
])
def test_every_parameter_is_checked_and_named(name, bad):
    kwargs = {"rank": 4, "eps": 0.1, name: bad}
    with pytest.raises(ValueError, match=name):
        ClusteringParams(**kwargs)


def test_the_entry_points_share_the_table():
    """pipeline.cluster refuses exactly what ClusteringParams refuses (patience 0 included)."""
    blocks = [np.eye(4, 2)] * 3
    with pytest.raises(ValueError, match="patience"):
        pipeline.cluster(blocks, rank=2, eps=0.1, patience=0)
    with pytest.raises(ValueError, match="rank"):
        pipeline.cluster(blocks, rank=0, eps=0.1)


def test_normalised_and_hashable_run_id():
    spelt_out = ClusteringParams(rank=np.int64(4), eps=0.1, tol=ClusteringParams.default("tol"),
                                 batch_bytes=ClusteringParams.default("batch_bytes"))
    short = ClusteringParams(rank=4, eps=0.1)
    assert spelt_out == short and type(spelt_out.rank) is int
    assert spelt_out.run_id("fp") == short.run_id("fp")
    assert short.run_id("fp") != ClusteringParams(rank=4, eps=0.1, shard_size=100).run_id("fp")
    assert short.run_id("fp") != short.run_id("other contents")
    # the sequential mode ignores the distributed-only parameters
    assert short.run_id("fp", "sequential") == ClusteringParams(rank=4, eps=0.1, shard_size=100).run_id("fp", "sequential")
    assert short.run_id("fp", "sequential").startswith("seq-") and short.run_id("fp").startswith("auto-")


def test_baselines_name_their_own_parameter():
    with pytest.raises(ValueError, match="n_clusters"):
        random_clustering([np.eye(3, 1)] * 4, n_clusters=0)
