"""The configuration and its rules, loaded together.

gateway.config knows nothing of classification and classification knows nothing
of gateway.config: this is the one place that hands the configured organisation
(plain values) to the rules and keeps the compiled rules on the configuration.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from gateway import config as config_mod
from gateway.config import CATEGORY_NAMES, Config, ConfigError, ConfigIssue
from gateway.stages.classify.organisation import Organisation
from gateway.stages.classify.rules import RuleSet, RulesSource, load_rules
from gateway.stages.classify.source import RulesError


def organisation(config: Config) -> Organisation:
    """What the rules may know of the configured organisation."""
    return Organisation.of(config.model.departments, categories=CATEGORY_NAMES,
                           triage_department=config.model.triage.department, domains=config.model.gateway.domains)


def rules_of(config: Config) -> RuleSet:
    """The configured rules file compiled, or no rules; a broken file raises ConfigError."""
    try:
        return load_rules(config.rules_path, organisation(config))
    except RulesError as exc:
        raise ConfigError([ConfigIssue(i.file, i.key, i.reason, i.line) for i in exc.issues]) from None


def load(path: str | os.PathLike[str] | None = None, *, check_dirs: bool = True, with_rules: bool = True) -> Config:
    """gateway.config.load, and then the rules file, or raise ConfigError listing every problem.

    Without with_rules, the rules file is not read (commands that only look at the register
    must work while an operator mends a broken rules file)."""
    config = config_mod.load(path, check_dirs=check_dirs)
    return replace(config, rules=rules_of(config)) if with_rules else config


# A compiled rule set does not pickle (its conditions are closures). A process of its
# own (the registrar's helper) gets the configuration without it and the rules'
# source beside it, with the source's data as read here (so that it needs no YAML
# reader of its own), and compiles the rules once, explicitly.
Portable = tuple[Config, RulesSource | None, Any]


def portable(config: Config) -> Portable:
    if config.rules is None:
        return config, None, None
    return replace(config, rules=None), config.rules.source, config.rules.source.read()


def restored(portable: Portable) -> Config:
    config, source, data = portable
    return config if source is None else replace(config, rules=source.compile(data))
