"""Faxes: reading fax documents and their text."""
