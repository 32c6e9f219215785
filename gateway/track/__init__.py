"""Tracking a letter to its end: the working-day calendar, deadlines and the lifecycle."""
