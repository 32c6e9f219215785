"""Turns a raw e-mail into the decoded fields, body text and attachments the register needs."""

from .charsets import decode_bytes
from .filenames import safe_filename, safe_join
from .message import html_body, normalise
from .model import Address, Attachment, Limits, Normalised
from .summary import summarise

__all__ = [
    "Address",
    "Attachment",
    "Limits",
    "Normalised",
    "decode_bytes",
    "html_body",
    "normalise",
    "safe_filename",
    "safe_join",
    "summarise",
]
