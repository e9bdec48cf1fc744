"""librdkafka's mock Kafka cluster, driven through ctypes: a Kafka to test against.

confluent-kafka's wheel bundles librdkafka, which contains a mock cluster that speaks the
real Kafka protocol on loopback. Its C functions are exported, so this module loads the
bundled library, creates a producer handle to own a cluster, and exposes the few calls the
tests need. Any client, in this process or another, connects with :attr:`bootstraps`.

The mock keeps only a bounded tail of each partition: use it for correctness, not throughput.
"""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

import confluent_kafka

from mercato.log.errors import LogError


def _library_path() -> str:
    package = Path(confluent_kafka.__file__).parent
    patterns = [
        str(package.parent / "confluent_kafka.libs" / "librdkafka*.so*"),
        str(package / ".dylibs" / "librdkafka*.dylib"),
        str(package / "librdkafka*"),
    ]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise LogError(f"librdkafka is not bundled with confluent-kafka in {package}")


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_library_path(), mode=os.RTLD_LOCAL)
    p, c_int, c_char_p, c_size_t = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t
    signatures: dict[str, tuple[list[type], type | None]] = {
        "rd_kafka_conf_new": ([], p),
        "rd_kafka_conf_set": ([p, c_char_p, c_char_p, c_char_p, c_size_t], c_int),
        "rd_kafka_new": ([c_int, p, c_char_p, c_size_t], p),
        "rd_kafka_destroy": ([p], None),
        "rd_kafka_mock_cluster_new": ([p, c_int], p),
        "rd_kafka_mock_cluster_destroy": ([p], None),
        "rd_kafka_mock_cluster_bootstraps": ([p], c_char_p),
        "rd_kafka_mock_topic_create": ([p, c_char_p, c_int, c_int], c_int),
        "rd_kafka_mock_broker_set_down": ([p, ctypes.c_int32], c_int),
        "rd_kafka_mock_broker_set_up": ([p, ctypes.c_int32], c_int),
        "rd_kafka_mock_partition_set_leader": (
            [p, c_char_p, ctypes.c_int32, ctypes.c_int32],
            c_int,
        ),
        "rd_kafka_mock_push_request_errors_array": (
            [p, ctypes.c_int16, c_size_t, ctypes.POINTER(c_int)],
            None,
        ),
        "rd_kafka_err2str": ([c_int], c_char_p),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


class MockKafkaCluster:
    """A mock Kafka cluster of ``brokers`` brokers on loopback, alive until :meth:`close`."""

    def __init__(self, brokers: int = 3) -> None:
        self._lib = _load()
        self.brokers = brokers
        errstr = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        # A client handle owns the cluster; it never connects anywhere itself.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"0", errstr, len(errstr))
        self._rk = self._lib.rd_kafka_new(0, conf, errstr, len(errstr))  # 0: RD_KAFKA_PRODUCER
        if not self._rk:
            raise LogError(f"cannot create a librdkafka handle: {errstr.value.decode()}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._cluster:
            self._lib.rd_kafka_destroy(self._rk)
            raise LogError("cannot create the librdkafka mock cluster")
        self.bootstraps: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise LogError(f"mock cluster: {what}: {self._lib.rd_kafka_err2str(code).decode()}")

    def create_topic(self, topic: str, partitions: int, replication_factor: int = 1) -> None:
        """Create ``topic`` with ``partitions`` partitions."""
        code = self._lib.rd_kafka_mock_topic_create(
            self._cluster, topic.encode(), partitions, replication_factor
        )
        self._check(code, f"create topic {topic}")

    def set_controller(self, broker: int) -> None:
        """Name ``broker`` the controller in metadata answers (the mock names none, so admin
        requests wait for one until they time out; it serves no CreateTopics either way)."""
        function = getattr(self._lib, "rd_kafka_mock_set_controller_id", None)
        if function is None:
            raise LogError("this librdkafka's mock cluster cannot name a controller")
        function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_int32], None
        function(self._cluster, broker)

    def broker_down(self, broker: int) -> None:
        """Disconnect broker ``broker`` (ids start at 1) and refuse connections to it."""
        self._check(self._lib.rd_kafka_mock_broker_set_down(self._cluster, broker), "broker down")

    def broker_up(self, broker: int) -> None:
        """Bring broker ``broker`` back."""
        self._check(self._lib.rd_kafka_mock_broker_set_up(self._cluster, broker), "broker up")

    def all_brokers_down(self) -> None:
        for broker in range(1, self.brokers + 1):
            self.broker_down(broker)

    def all_brokers_up(self) -> None:
        for broker in range(1, self.brokers + 1):
            self.broker_up(broker)

    def set_leader(self, topic: str, partition: int, broker: int) -> None:
        """Move the leadership of ``topic``/``partition`` to ``broker``."""
        code = self._lib.rd_kafka_mock_partition_set_leader(
            self._cluster, topic.encode(), partition, broker
        )
        self._check(code, "set leader")

    def push_request_errors(self, api_key: int, errors: list[int]) -> None:
        """Fail the next ``len(errors)`` requests of ``api_key`` (0: Produce) with ``errors``.

        The codes are Kafka protocol error codes, as in ``confluent_kafka.KafkaError``.
        """
        array = (ctypes.c_int * len(errors))(*errors)
        self._lib.rd_kafka_mock_push_request_errors_array(
            self._cluster, api_key, len(errors), array
        )

    def close(self) -> None:
        """Destroy the cluster; its clients see every broker go away."""
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._cluster = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None

    def __enter__(self) -> MockKafkaCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
