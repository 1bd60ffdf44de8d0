"""``cmsvd inspect`` shows provenance entry by entry, never cut in the middle of a value."""

from flows.cli.data import _provenance_lines


def test_provenance_lines_summarise_lists_and_shorten_long_values_in_the_middle():
    source = "/data/" + "x" * 300 + "/model.safetensors"
    lines = _provenance_lines({"format": "safetensors", "source": source,
                               "tensors": [{"name": "a"}] * 104, "skipped": ["b", "c", "d", "e"], "metadata": {"k": 1}})
    assert lines[0] == "format: safetensors"
    assert lines[1].startswith("source: /data/xx") and lines[1].endswith("/model.safetensors") and " ... " in lines[1]
    assert lines[2] == "tensors: 104 entries"
    assert lines[3] == "skipped: 4 entries (b, c, d, ...)"
    assert lines[4] == "metadata: 1 keys"
    assert "--json" in lines[-1]
