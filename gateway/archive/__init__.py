"""The monthly archive: packages in standard formats, a manifest each, verification, retention."""


class ArchiveError(Exception):
    """What the archive cannot do (here, not in the packer: a reader that only catches it need not
    load the packer)."""
