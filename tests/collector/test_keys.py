import msgspec
import pytest

from mercato.collector.errors import KeyStoreError
from mercato.collector.keys import KeyStore, hash_key


def test_keys_are_stored_hashed(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    key, secret = store.create("web")
    text = (tmp_path / "keys.json").read_text()
    assert secret not in text
    assert hash_key(secret) in text
    assert store.check(secret).source == "web"
    assert key.id in text


def test_unknown_and_revoked(tmp_path):
    store = KeyStore(tmp_path / "keys.json", reload_interval=0)
    key, secret = store.create("web")
    assert store.check("mk_other").source is None
    assert not store.check("mk_other").revoked
    store.revoke(key.id)
    assert store.check(secret).source is None
    assert store.check(secret).revoked


def test_a_running_reader_sees_changes_from_another_store(tmp_path):
    reader = KeyStore(tmp_path / "keys.json", reload_interval=0)
    writer = KeyStore(tmp_path / "keys.json")
    assert reader.check("mk_x").source is None
    key, secret = writer.create("app")
    assert reader.check(secret).source == "app"
    writer.revoke(key.id)
    assert reader.check(secret).revoked


def test_revoking_an_unknown_id_fails(tmp_path):
    with pytest.raises(KeyStoreError, match="wk_nope"):
        KeyStore(tmp_path / "keys.json").revoke("wk_nope")


def test_bad_source_name(tmp_path):
    with pytest.raises(KeyStoreError):
        KeyStore(tmp_path / "keys.json").create("no spaces")


def test_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(KeyStoreError, match="cannot read write keys"):
        KeyStore(tmp_path / "keys.json").list()


def test_list_shows_every_key(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    store.create("a")
    store.create("b")
    assert [k.source for k in store.list()] == ["a", "b"]
    assert msgspec.json.decode((tmp_path / "keys.json").read_bytes())["keys"][0]["source"] == "a"
