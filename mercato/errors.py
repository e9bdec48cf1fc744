"""The root of Mercato's exceptions.

Every error Mercato raises on purpose derives from :class:`MercatoError`; each role adds its
own subclasses in its ``errors.py``::

    MercatoError
    ├── ConfigError                 (here: the configuration is invalid; names the key)
    ├── CronError                   (here: a schedule that is not a five-field cron expression)
    ├── EventError                  (mercato.events.errors)
    │   ├── InvalidEventError
    │   └── EventTooLargeError
    ├── LogError                    (mercato.log.errors)
    │   ├── LogCorruptionError
    │   ├── LogWriteError
    │   ├── LogLayoutError
    │   └── OffsetOutOfRangeError
    ├── KeyStoreError               (mercato.collector.errors)
    ├── DefinitionError             (mercato.metrics.errors)
    ├── AggregatorError             (mercato.aggregator.errors)
    ├── ConsoleError                (mercato.console.errors)
    ├── ArchiveError                (mercato.archive.errors; its subclasses are drawn there)
    └── StoreError                  (mercato.store.errors; its subclasses are drawn there)

The CLI turns a ``MercatoError`` into a one-line message and a non-zero exit status, never a
traceback.
"""


class MercatoError(Exception):
    """Base class of every error Mercato raises on purpose."""


class ConfigError(MercatoError):
    """The configuration is invalid; the message names the key."""


class CronError(MercatoError):
    """A cron schedule does not parse; the message names the field."""


def retry_pause(failures: int, ceiling: float = 30.0) -> float:
    """Seconds a service waits after its ``failures``-th failure in a row of something that
    may come back (brokers, a database, an object store): 0.5, 1, 2, ... up to ``ceiling``."""
    return float(min(ceiling, 0.5 * 2.0 ** min(max(failures, 1) - 1, 16)))
