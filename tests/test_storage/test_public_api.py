"""``storage.__all__`` is written out: it names every public object of the package, once."""

import types

import storage
import storage.runs


def test_all_lists_every_public_name_once():
    public = {n for n, v in vars(storage).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert len(storage.__all__) == len(set(storage.__all__))
    assert set(storage.__all__) == public
    for name in storage.__all__:
        assert getattr(storage, name).__module__.startswith("storage.")


def test_removed_aliases_stay_removed():
    # one name per concept: publish (not commit), url (not path); json_default is private
    assert not hasattr(storage.CollectionWriter, "commit")
    assert not hasattr(storage.Run, "path")
    assert "json_default" not in storage.runs.__all__
