"""The root of Mercato's exceptions.

Every error Mercato raises on purpose derives from :class:`MercatoError`; each role adds its
own subclasses in its ``errors.py``::

    MercatoError
    ├── ConfigError                 (mercato.config)
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
    ├── ArchiveError                (mercato.archive.errors; its subclasses are drawn there)
    └── StoreError                  (mercato.store.errors; its subclasses are drawn there)

The CLI turns a ``MercatoError`` into a one-line message and a non-zero exit status, never a
traceback.
"""


class MercatoError(Exception):
    """Base class of every error Mercato raises on purpose."""
