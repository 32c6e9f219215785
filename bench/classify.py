"""Classification time per letter with 10, 1,000 and 10,000 rules; the ratio of 10,000 to 10 (target: under 2).

Each rule set is generated, of the kinds large rule sets are made of:
keyword rules (Chinese words of three or four characters and Latin words,
in subject and body) and sender-domain rules, each routing to some
department, over the shipped departments. The letters are realistic: Chinese
and English, 1 to 4 KiB, some matching shipped rules, some generated ones,
some none. Only classification is timed (the facts are built beforehand),
letters in rotation, rule sets alternating over several rounds; the printed
p50 and p99 are medians over the rounds.

    .venv/bin/python bench/classify.py [--rounds 5] [--letters 3000]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def rule_set(organisation: Organisation, count: int) -> RuleSet:
    text = "rules:\n" + generated_rules(count, random.Random(count))
    return compile_rules(Path(f"{count}-generated.yaml"), text, organisation)


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
    sets = {}
    for total in (10, 1000, 10000):
        started = time.perf_counter()
        sets[total] = rule_set(organisation, total)
        print(f"{len(sets[total]):>6} rules, {len(sets[total].keywords):>6} keywords: compiled in "
              f"{time.perf_counter() - started:.2f} s")
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
    print(f"\n{'rules':>6} {'p50 (µs)':>10} {'p99 (µs)':>10}")
    for total in sets:
        print(f"{total:>6} {statistics.median(p50s[total]) * 1e6:>10.0f} {statistics.median(p99s[total]) * 1e6:>10.0f}")
    ratio50 = statistics.median(p50s[10000]) / statistics.median(p50s[10])
    ratio99 = statistics.median(p99s[10000]) / statistics.median(p99s[10])
    print(f"\nratio 10,000 rules / 10 rules: p50 {ratio50:.2f}, p99 {ratio99:.2f} (target: under 2)")


if __name__ == "__main__":
    main()
