"""Normalising one long paragraph, HTML or format=flowed, beside the same text sent as plain text.

A hostile or careless sender can write a letter as one paragraph of megabytes: HTML in many short
runs between inline tags, or format=flowed text of many soft-broken lines. Both were once joined
by copying the whole paragraph at each run or line, which grows with the square of its length.

For each kind, at 1x and 3x the size (1 MB and 3 MB of HTML; 40,000 and 120,000 flowed lines),
the CPU time of `normalise` on the message, beside the same words sent as a plain text/plain body
(which nothing has to join: the baseline, linear by construction), in alternating rounds. Printed
per kind: the medians, the ratio baseline / gateway at each size, and each side's growth from 1x
to 3x (about 3 when linear; a quadratic join gives about 9).

    .venv/bin/python bench/long_paragraphs.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.stages.normalise import normalise  # noqa: E402

HEAD = b"From: a@partner.example\r\nTo: liaison@example.org\r\nSubject: long\r\nMIME-Version: 1.0\r\n"
RUN = "Dear partner, 合同 <span>已收到</span> &amp; <b>thanks</b>, "
PLAIN_RUN = "Dear partner, 合同 已收到 & thanks, "


def html_mail(size: int) -> bytes:
    body = "<html><body><p>" + RUN * (size // len(RUN.encode())) + "</p></body></html>"
    return HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body.encode()


def html_baseline(size: int) -> bytes:
    text = PLAIN_RUN * (size // len(RUN.encode()))
    return HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode()


def flowed_mail(lines: int) -> bytes:
    return (HEAD + b"Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\n"
            + "合同 word \r\n".encode() * lines + b"end\r\n")


def flowed_baseline(lines: int) -> bytes:
    return HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "合同 word ".encode() * lines + b"end\r\n"


def cpu_seconds(action: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        action()
        return time.process_time() - start
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kinds = {"HTML paragraph": (html_mail, html_baseline, 1_000_000),
             "format=flowed paragraph": (flowed_mail, flowed_baseline, 40_000)}
    for name, (ours, baseline, size) in kinds.items():
        normalise(ours(size // 10))  # modules loaded
        times: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            sides = [("gateway", ours), ("baseline", baseline)]
            for side, make in sides if round_ % 2 == 0 else sides[::-1]:
                for factor in (1, 3):
                    message = make(size * factor)
                    taken = cpu_seconds(lambda message=message: normalise(message))
                    times.setdefault((side, factor), []).append(taken)
        median = {key: statistics.median(values) for key, values in times.items()}
        print(f"{name}:")
        for factor in (1, 3):
            g, b = median[("gateway", factor)], median[("baseline", factor)]
            print(f"  {factor}x: gateway {g:.3f} s, baseline (plain text) {b:.3f} s, ratio {b / g:.2f}")
        print(f"  growth 1x -> 3x: gateway {median[('gateway', 3)] / median[('gateway', 1)]:.2f}, "
              f"baseline {median[('baseline', 3)] / median[('baseline', 1)]:.2f} (linear: about 3)")


if __name__ == "__main__":
    main()
