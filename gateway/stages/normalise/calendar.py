"""An invitation's readable text: what, when, where, who and the description of an iCalendar
(RFC 5545) part, for a letter that is nothing but an invitation (Outlook, Google Calendar and
DingTalk send many with no text/plain or text/html part). The .ics itself stays an attachment.

Read leniently, as calendar programs read it: unknown properties are passed over, a line without a
colon is ignored, and nothing raises on what a sender wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A folded line goes on after a line break and one space or tab (RFC 5545 §3.1).
_FOLD = re.compile(r"\r\n[ \t]|\n[ \t]|\r[ \t]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_TEXT_ESCAPE = re.compile(r"\\(.)", re.S)
_DATE_TIME = re.compile(r"^(\d{4})(\d\d)(\d\d)(?:T(\d\d)(\d\d)(\d\d)?(Z?))?$")
_METHODS = {"REQUEST": "Invitation", "CANCEL": "Cancelled", "REPLY": "Reply to an invitation",
            "COUNTER": "Counter-proposal", "PUBLISH": "Event"}
_MAX_EVENTS = 20  # a calendar export may hold thousands; the letter's text names the first ones


@dataclass
class _Event:
    properties: dict[str, tuple[dict[str, str], str]] = field(default_factory=dict)  # the first of each


def calendar_text(text: str) -> str:
    """The readable text of an iCalendar object, or "" when it holds no event."""
    method = ""
    events: list[_Event] = []
    depth_in_event = 0  # > 0 inside a VEVENT (its VALARMs are nested components, not the event's)
    events_seen = 0
    for line in _LINE_BREAK.split(_FOLD.sub("", text)):
        name, params, value = _content_line(line)
        if name == "BEGIN":
            if value.upper() == "VEVENT" and not depth_in_event:
                events_seen += 1
                if len(events) < _MAX_EVENTS:
                    events.append(_Event())
                depth_in_event = 1
            elif depth_in_event:
                depth_in_event += 1
        elif name == "END":
            depth_in_event = max(0, depth_in_event - 1)
        elif name == "METHOD" and not depth_in_event:
            method = value.strip().upper()
        elif depth_in_event == 1 and events_seen <= _MAX_EVENTS:
            events[-1].properties.setdefault(name, (params, value))
    rendered = [_render(event, method) for event in events]
    if events_seen > len(events):
        rendered.append(f"({events_seen - len(events)} more events in the calendar file)")
    return "\n\n".join(part for part in rendered if part)


def _content_line(line: str) -> tuple[str, dict[str, str], str]:
    """(NAME, {PARAM: value}, value) of `name;param=value;...:value`; quoted parameter values may
    hold ':' and ';'. A line without an unquoted ':' gives an empty name."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == ":" and not quoted:
            head, value = line[:index], line[index + 1:]
            break
    else:
        return "", {}, ""
    name, *raw_params = _split_unquoted(head, ";")
    params: dict[str, str] = {}
    for raw in raw_params:
        key, _, param_value = raw.partition("=")
        params.setdefault(key.strip().upper(), param_value.strip().strip('"'))
    return name.strip().upper(), params, value


def _split_unquoted(text: str, separator: str) -> list[str]:
    parts, start, quoted = [], 0, False
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _unescape(value: str) -> str:
    """TEXT values escape line breaks, commas, semicolons and backslashes (RFC 5545 §3.3.11)."""
    return _TEXT_ESCAPE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), value).strip()


def _render(event: _Event, method: str) -> str:
    props = event.properties

    def text(name: str) -> str:
        return _unescape(props[name][1]) if name in props else ""

    heading = _METHODS.get(method, "Event")
    if text("STATUS").upper() == "CANCELLED":
        heading = "Cancelled"
    lines = [f"{heading}: {text('SUMMARY') or '(no title)'}"]
    start, end = _when("DTSTART", props), _when("DTEND", props)
    if start:
        if end[:11] == start[:11] and len(end) > 11:  # the same day: its time only
            end = end[11:]
        lines.append(f"When: {start}" + (f" – {end}" if end and end != start else ""))
    if text("LOCATION"):
        lines.append(f"Where: {text('LOCATION')}")
    if "ORGANIZER" in props:
        lines.append(f"Organiser: {_person(*props['ORGANIZER'])}")
    description = text("DESCRIPTION")
    if description:
        lines += ["", description]
    return "\n".join(lines)


def _when(name: str, props: dict[str, tuple[dict[str, str], str]]) -> str:
    if name not in props:
        return ""
    params, value = props[name]
    found = _DATE_TIME.match(value.strip())
    if not found:
        return value.strip()  # as written: a reader still understands it
    year, month, day, hour, minute, _, utc = found.groups()
    if hour is None:
        return f"{year}-{month}-{day}"
    zone = " UTC" if utc else (f" ({params['TZID']})" if params.get("TZID") else "")
    return f"{year}-{month}-{day} {hour}:{minute}{zone}"


def _person(params: dict[str, str], value: str) -> str:
    address = re.sub(r"^mailto:", "", value.strip(), flags=re.I)
    name = params.get("CN", "")
    return f"{name} <{address}>" if name and address else name or address
