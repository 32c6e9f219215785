"""Working days: weekends, public holidays and make-up working days, in the organisation's time zone.

Deadlines are counted in working days. A letter received on a day off is
counted from the next working day; its deadline is the end (23:59:59 local)
of the n-th working day after the day it counts from, so "1 working day" for
a letter received on Friday afternoon is the end of Monday.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class WorkingCalendar:
    def __init__(self, timezone: str, weekend: list[str], holidays: list[date], working_days: list[date]):
        self.tz = ZoneInfo(timezone)
        self.weekend = {WEEKDAYS.index(day) for day in weekend}
        self.holidays = set(holidays)
        self.working_days = set(working_days)  # make-up days: worked although on a weekend

    def is_working_day(self, day: date) -> bool:
        if day in self.working_days:
            return True
        return day.weekday() not in self.weekend and day not in self.holidays

    def add_working_days(self, start: date, days: int) -> date:
        """The n-th working day after `start` (start itself when n is 0 and it is a working day)."""
        day = start
        while not self.is_working_day(day):
            day += timedelta(days=1)
        left = days
        while left > 0:
            day += timedelta(days=1)
            if self.is_working_day(day):
                left -= 1
        return day

    def deadline(self, received: datetime, days: int) -> datetime:
        local = received.astimezone(self.tz)
        day = self.add_working_days(local.date(), days)
        return datetime.combine(day, time(23, 59, 59), self.tz)

    def working_days_between(self, start: datetime, end: datetime) -> int:
        """Whole working days from start's day (excluded) to end's day (included)."""
        first, last = start.astimezone(self.tz).date(), end.astimezone(self.tz).date()
        count, day = 0, first
        while day < last:
            day += timedelta(days=1)
            count += self.is_working_day(day)
        return count
