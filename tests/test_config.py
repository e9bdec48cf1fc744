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


def test_server_limits_from_file_and_environment(tmp_path):
    path = write(tmp_path, "[api]\nmax_connections = 50\nheader_timeout_seconds = 2.5\n")
    config = load_config(path, env={"MERCATO_COLLECTOR_MAX_QUEUE_SECONDS": "0.25"})
    assert (config.api.max_connections, config.api.header_timeout_seconds) == (50, 2.5)
    assert config.collector.max_queue_seconds == 0.25
    assert config.collector.max_header_bytes == 32 * 1024


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
        ("[collector]\nmax_header_bytes = 100\n", "collector.max_header_bytes"),
        ("[api]\nheader_timeout_seconds = 0\n", "api.header_timeout_seconds"),
        ("[api]\nmax_connections = 0\n", "api.max_connections"),
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
        ({"MERCATO_COLLECTOR_MAX_QUEUE_SECONDS": "soon"}, "collector.max_queue_seconds"),
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


# -- [scheduler] and its jobs --------------------------------------------------------------------


def test_default_jobs():
    jobs = load_config(env={}).scheduler.jobs
    assert {name: (job.schedule, job.command) for name, job in jobs.items()} == {
        "seal": ("*/5 * * * *", ["seal"]),
        "compact": ("7 * * * *", ["archive", "compact", "--all"]),
        "retention": ("30 3 * * *", ["log", "retention"]),
        "drift": ("15 * * * *", ["drift"]),
        "prune": ("45 3 * * *", ["versions", "prune"]),
    }
    assert all(job.enabled for job in jobs.values())


def test_a_job_table_changes_adds_or_disables_jobs(tmp_path):
    path = write(
        tmp_path,
        "[scheduler.jobs.seal]\nretries = 5\n"
        "[scheduler.jobs.drift]\nenabled = false\n"
        '[scheduler.jobs.report]\nschedule = "0 2 * * *"\ncommand = ["/opt/report.sh"]\n',
    )
    jobs = load_config(path, env={}).scheduler.jobs
    assert (jobs["seal"].schedule, jobs["seal"].retries) == ("*/5 * * * *", 5)  # the rest kept
    assert not jobs["drift"].enabled
    assert jobs["report"].command == ["/opt/report.sh"]
    assert jobs["report"].retries == 2
    assert set(jobs) == {"seal", "compact", "retention", "drift", "prune", "report"}


def test_scheduler_settings_and_jobs_from_environment():
    config = load_config(
        env={
            "MERCATO_SCHEDULER_LEASE_SECONDS": "12.5",
            "MERCATO_SCHEDULER_ON_ERROR_COMMAND": "/usr/bin/notify, --urgent",
            "MERCATO_SCHEDULER_JOBS_SEAL_ENABLED": "false",
            "MERCATO_SCHEDULER_JOBS_COMPACT_TIMEOUT_SECONDS": "60",
            "MERCATO_SCHEDULER_JOBS_NIGHTLY_REPORT_SCHEDULE": "0 2 * * *",
            "MERCATO_SCHEDULER_JOBS_NIGHTLY_REPORT_COMMAND": "/opt/report.sh,--all",
        }
    )
    settings = config.scheduler
    assert settings.lease_seconds == 12.5
    assert settings.on_error_command == ["/usr/bin/notify", "--urgent"]
    assert not settings.jobs["seal"].enabled
    assert settings.jobs["compact"].timeout_seconds == 60
    assert settings.jobs["nightly_report"].command == ["/opt/report.sh", "--all"]


def test_the_error_hook_variables_are_not_configuration():
    # an on_error_command that runs mercato again must not trip over them
    env = {"MERCATO_JOB": "seal", "MERCATO_RUN_ID": "7", "MERCATO_ATTEMPT": "3"}
    assert load_config(env={**env, "MERCATO_ERROR": "exit status 1"}) == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[scheduler.jobs.seal]\nschedule = "61 * * * *"\n',
            "scheduler.jobs.seal.schedule: cron schedule '61 * * * *': minute field '61'",
        ),
        (
            '[scheduler.jobs.nightly]\nschedule = "0 2 * *"\ncommand = ["x"]\n',
            "scheduler.jobs.nightly.schedule: cron schedule '0 2 * *' has 4 field(s)",
        ),
        ('[scheduler.jobs.new]\ncommand = ["x"]\n', "scheduler.jobs.new: Object missing"),
        ("[scheduler.jobs.seal]\ncommand = []\n", "scheduler.jobs.seal.command must not be empty"),
        ("[scheduler.jobs.seal]\nretry = 1\n", "unknown key 'scheduler.jobs.seal.retry'"),
        ("[scheduler.jobs.seal]\nretries = -1\n", "scheduler.jobs.seal.retries"),
        ('[scheduler.jobs."My Job"]\n', "scheduler.jobs.My Job: a job name is lowercase"),
        ("[scheduler]\njobs = 1\n", "scheduler.jobs must be a table of jobs"),
        ("[scheduler]\ntick_seconds = 30\n", "tick_seconds (30.0) must be shorter than lease"),
        ('[scheduler]\non_error_webhook = "example.com"\n', "on_error_webhook must be an http"),
    ],
)
def test_invalid_scheduler_settings_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text), env={})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_unknown_job_key_in_the_environment_is_named():
    with pytest.raises(ConfigError, match=r"MERCATO_SCHEDULER_JOBS_SEAL_ENABLE:.*<NAME>_<KEY>"):
        load_config(env={"MERCATO_SCHEDULER_JOBS_SEAL_ENABLE": "false"})


def test_dump_with_jobs_reads_back(tmp_path):
    path = write(
        tmp_path,
        '[scheduler.jobs.drift]\nenabled = false\n[scheduler.jobs.x]\nschedule = "@daily"\n'
        'command = ["/bin/echo", "a \\"quoted\\" word"]\n',
    )
    config = load_config(path, env={})
    assert load_config(write(tmp_path, dump_config(config)), env={}) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[colector]\nport = 1\n", "unknown key 'colector' (did you mean collector?)"),
        ("[collector]\nprot = 1\n", "unknown key 'collector.prot' (did you mean port?)"),
        ("[collector]\nzzz = 1\n", "unknown key 'collector.zzz'"),
    ],
)
def test_an_unknown_key_names_the_file_and_the_nearest_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={})
    assert str(raised.value) == f"invalid configuration in {path}: {message}"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("MERCATO_API_PORTT", "[api] has no portt (did you mean MERCATO_API_PORT?)"),
        ("MERCATO_APIPORT", "MERCATO_APIPORT (did you mean MERCATO_API_PORT?)"),
        ("MERCATO_QQQ", "unknown environment variable MERCATO_QQQ"),
    ],
)
def test_an_unknown_variable_suggests_the_nearest(name, message):
    with pytest.raises(ConfigError) as raised:
        load_config(env={name: "1"})
    assert str(raised.value).endswith(message)
