"""Correspondence Gateway: every letter received, registered, routed, tracked and archived."""
