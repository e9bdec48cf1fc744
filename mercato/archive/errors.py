"""Errors of the archive role (archiver, compaction, readers).

::

    MercatoError
    └── ArchiveError                the archive cannot be used as asked
        ├── ArchiveLayoutError      a name, date or hour that is not the archive's, an
        │                           unsupported root, a state file that does not parse, or
        │                           committed files that overlap without one containing the other
        ├── PartitionBusyError      another archiver process owns one of the partitions
        ├── ArchiveUnavailableError the object store of an s3:// root cannot be used: it
        │                           cannot be reached, the bucket does not exist, or access
        │                           is denied
        └── CompactionError         a merged file did not hold exactly its inputs' rows; the
                                    merged file was deleted and the inputs kept
"""

from mercato.errors import MercatoError


class ArchiveError(MercatoError):
    """Base class of the archive's errors."""


class ArchiveLayoutError(ArchiveError):
    """Something in or about the archive does not follow its layout."""


class PartitionBusyError(ArchiveError):
    """Another archiver holds the partition's lock."""


class ArchiveUnavailableError(ArchiveError):
    """The object store holding the archive cannot be reached or used."""


class CompactionError(ArchiveError):
    """A compaction's output did not match its inputs; nothing was deleted."""
