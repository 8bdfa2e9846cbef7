"""Recurring schedules: their timing, their rows, and one firing."""
