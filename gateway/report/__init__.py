"""What the organisation is judged by: metrics for monitoring (and, later, reports)."""
