import pytest

from mercato.config import Config, ConfigError, dump_config, load_config


def write(tmp_path, text):
    path = tmp_path / "mercato.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment():
    config = load_config(env={})
    assert config == Config()
    assert config.log.partitions == 8
    assert config.collector.max_body_bytes == 500 * 1024


def test_file_then_environment(tmp_path):
    path = write(tmp_path, 'data_dir = "/srv/m"\n[log]\npartitions = 4\n[collector]\nport = 9000\n')
    config = load_config(path, env={"MERCATO_COLLECTOR_PORT": "9100"})
    assert config.data_dir == "/srv/m"
    assert config.log.partitions == 4
    assert config.collector.port == 9100


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "[log]\npartitions = 3\n")
    assert load_config(env={"MERCATO_CONFIG": str(path)}).log.partitions == 3


def test_list_values_from_environment():
    config = load_config(
        env={"MERCATO_COLLECTOR_SEGMENT_MERCHANT_ID_PATHS": "traits.shop, context.groupId"}
    )
    assert config.collector.segment_merchant_id_paths == ["traits.shop", "context.groupId"]


def test_config_is_frozen():
    config = load_config(env={})
    with pytest.raises(AttributeError):
        config.log.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[log]\npartitons = 4\n", "log.partitons"),
        ("colector = 1\n", "colector"),
        ("[log]\npartitions = 0\n", "log.partitions"),
        ("[collector]\nport = 70000\n", "collector.port"),
        ('[log]\nfsync = "sometimes"\n', "log.fsync"),
        ('[log]\nbackend = "tape"\n', "log.backend"),
    ],
)
def test_invalid_file_names_the_key(tmp_path, text, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(write(tmp_path, text), env={})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MERCATO_LOG_PARTITONS": "4"}, "MERCATO_LOG_PARTITONS"),
        ({"MERCATO_NOPE": "1"}, "MERCATO_NOPE"),
        ({"MERCATO_LOG_PARTITIONS": "many"}, "log.partitions"),
    ],
)
def test_invalid_environment_names_the_variable(env, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(env=env)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[log\n"), env={})


def test_dump_reads_back(tmp_path):
    config = load_config(env={"MERCATO_LOG_PARTITIONS": "5"})
    assert load_config(write(tmp_path, dump_config(config)), env={}) == config
