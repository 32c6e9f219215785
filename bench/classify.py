"""Compiling 10, 1,000 and 10,000 rules beside the bare parse of the same file; classification time per
letter with each, and the ratio of 10,000 rules to 10 (targets: 10,000 rules compiled in under 0.5 s,
matching within 2x).

Each rule set is generated, of the kinds large rule sets are made of:
keyword rules (Chinese words of three or four characters and Latin words,
in subject and body) and sender-domain rules, each routing to some
department, over the shipped departments.

Compiling: `compile_rules` (read, by yaml_rs where it gives PyYAML's data, with
the rules' lines; validate, build conditions, index, keyword automaton) against
the baseline of reading the same text with
PyYAML's C loader into plain dicts and lists (`yaml.load(text, CSafeLoader)`),
with the cyclic collector paused for it as compiling pauses it (the collector
running makes that load several times slower). Gateway and baseline alternate
over the rounds; wall and CPU seconds are medians over the rounds, and the
ratio is baseline time / gateway time (above 1: compiling costs less than the
bare parse).

Matching: the letters are realistic, Chinese and English, 1 to 4 KiB, some
matching shipped rules, some generated ones, some none. Only classification is
timed (the facts are built beforehand), letters in rotation, rule sets
alternating over several rounds; the printed p50 and p99 are medians over the
rounds.

    .venv/bin/python bench/classify.py [--rounds 5] [--letters 3000]
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import config as config_mod  # noqa: E402
from gateway.stages.classify.facts import Facts  # noqa: E402
from gateway.stages import rulebook  # noqa: E402
from gateway.stages.classify.organisation import Organisation  # noqa: E402
from gateway.stages.classify.rules import RuleSet, compile_rules  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Common characters of business Chinese: generated keywords are words made of them.
POOL = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产"
        "种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从"
        "业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又"
        "么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位"
        "入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放"
        "决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联")
DEPARTMENTS = ["general-office", "administration", "business", "customer-service", "hr"]
CHINESE = ("尊敬的合作伙伴：感谢贵公司一直以来的支持。关于本季度的供货安排，我方已按合同约定完成备货，"
           "预计下周分批发运。请贵方在收到货物后及时核对数量与质量，如有问题请于三个工作日内反馈。"
           "另附本月对账单，请财务部门核对后盖章回传。顺祝商祺！\n")
ENGLISH = ("Dear colleagues, further to our meeting last Tuesday we send the revised schedule for the "
           "deliveries of the fourth quarter. Please check the quantities against your records and let us "
           "know of any difference within three working days. The statement of account is attached.\n")


def generated_rules(count: int, rng: random.Random) -> str:
    lines = []
    for n in range(count):
        dept = DEPARTMENTS[n % len(DEPARTMENTS)]
        kind = n % 10
        if kind < 5:
            words = ["".join(rng.choice(POOL) for _ in range(rng.choice((3, 4)))) for _ in range(2)]
            when = f"keywords: [\"{words[0]}\", \"{words[1]}\"]"
        elif kind < 8:
            words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(7, 10)))
                     for _ in range(2)]
            when = f"keywords: [\"{words[0]}\", \"{words[1]} project\"]"
        else:
            when = f"sender_domain: [\"partner{n}.example\", \"*.partner{n}.example\"]"
        lines += [f"  - name: generated-{n}", f"    when: {{{when}}}", f"    set: {{department: {dept}, tags: [g{n}]}}"]
    return "\n".join(lines) + "\n"


def rules_text(count: int) -> str:
    return "rules:\n" + generated_rules(count, random.Random(count))


def timed(work: Callable[[], object]) -> tuple[object, float, float]:
    """What work returns, and its wall and CPU seconds (the result is freed by the caller, untimed)."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bare_parse(text: str) -> object:
    """The baseline: the same text into plain dicts and lists, the collector paused as compiling pauses it."""
    gc.disable()
    try:
        return yaml.load(text, Loader=yaml.CSafeLoader)
    finally:
        gc.enable()


def compile_figures(organisation: Organisation, rounds: int) -> dict[int, RuleSet]:
    texts = {total: rules_text(total) for total in (10, 1000, 10000)}
    figures: dict[tuple[int, str], list[tuple[float, float]]] = {}
    sets: dict[int, RuleSet] = {}
    for round_ in range(rounds):
        for total, text in texts.items():
            runs: list[tuple[str, Callable[[], object]]] = [
                ("gateway", partial(compile_rules, Path(f"{total}-generated.yaml"), text, organisation)),
                ("baseline", partial(bare_parse, text))]
            for name, work in runs if round_ % 2 == 0 else runs[::-1]:
                result, wall, cpu = timed(work)
                figures.setdefault((total, name), []).append((wall, cpu))
                if isinstance(result, RuleSet):
                    sets[total] = result
                del result
    print(f"compiling, medians of {rounds} alternating rounds (baseline: yaml.load with PyYAML's C loader)")
    print(f"{'rules':>6} {'keywords':>9} {'gateway s':>10} {'(cpu)':>7} {'baseline s':>11} {'(cpu)':>7} {'ratio':>6}")
    for total, ruleset in sets.items():
        ours = [statistics.median(f) for f in zip(*figures[total, "gateway"], strict=True)]
        bare = [statistics.median(f) for f in zip(*figures[total, "baseline"], strict=True)]
        print(f"{total:>6} {len(ruleset.keywords):>9} {ours[0]:>10.3f} {ours[1]:>7.3f} {bare[0]:>11.3f} {bare[1]:>7.3f}"
              f" {bare[0] / ours[0]:>6.2f}")
    print(f"10,000 rules compiled in {statistics.median(w for w, _ in figures[10000, 'gateway']):.3f} s "
          "(target: under 0.5 s)")
    return sets


def letters(rng: random.Random) -> list[Facts]:
    out = []
    subjects = ["关于第四季度供货安排的函", "Delivery schedule Q4", "对账单", "关于订单延误的投诉", "Meeting notes",
                "合同续签事宜", "Question about our invoice", "年会邀请"]
    senders = ["partner@supplier.example", "office@district.gov.cn", "zhang@customer.example", "li@partner17.example",
               "bob@example.org", "anna@partner.example"]
    for i in range(24):
        paragraphs = (CHINESE if i % 2 == 0 else ENGLISH) * rng.randint(3, 12)
        out.append(Facts("email", senders[i % len(senders)], "", ["liaison@example.org"], subjects[i % len(subjects)],
                         paragraphs, attachments=[("statement.pdf", "application/pdf")]))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--letters", type=int, default=3000, help="classifications per rule set and round")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        text = (ROOT / "config" / "gateway.toml").read_text().replace('state_dir = "../storage"',
                                                                      f'state_dir = "{tmp}/state"')
        (Path(tmp) / "gateway.toml").write_text(text)
        organisation = rulebook.organisation(config_mod.load(Path(tmp) / "gateway.toml"))
    sets = compile_figures(organisation, args.rounds)
    sample = letters(random.Random(1))
    p50s: dict[int, list[float]] = {n: [] for n in sets}
    p99s: dict[int, list[float]] = {n: [] for n in sets}
    for ruleset in sets.values():  # warm up
        for facts in sample:
            ruleset.classify(facts)
    for _ in range(args.rounds):
        for total, ruleset in sets.items():
            times = []
            for i in range(args.letters):
                facts = sample[i % len(sample)]
                started = time.perf_counter()
                ruleset.classify(facts)
                times.append(time.perf_counter() - started)
            p50s[total].append(percentile(times, 0.50))
            p99s[total].append(percentile(times, 0.99))
    print(f"\nclassifying, medians of {args.rounds} rounds of {args.letters} letters")
    print(f"{'rules':>6} {'p50 (µs)':>10} {'p99 (µs)':>10}")
    for total in sets:
        print(f"{total:>6} {statistics.median(p50s[total]) * 1e6:>10.0f} {statistics.median(p99s[total]) * 1e6:>10.0f}")
    ratio50 = statistics.median(p50s[10000]) / statistics.median(p50s[10])
    ratio99 = statistics.median(p99s[10000]) / statistics.median(p99s[10])
    print(f"\nratio 10,000 rules / 10 rules: p50 {ratio50:.2f}, p99 {ratio99:.2f} (target: under 2)")


if __name__ == "__main__":
    main()
