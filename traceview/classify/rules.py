"""The rule table: loading ``rules.toml`` (and a user's overrides) and matching names."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import UsageError
from .names import function_name, own_name

ROLES = ("compute", "comm", "memory")
UNCLASSIFIED = "unclassified"


#: what part of a kernel name a rule's pattern is searched in (see names.py)
MATCH_ON = ("name", "template")
_KERNEL_KINDS = ("gpu_memcpy", "gpu_memset")


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    category: str
    kinds: tuple[str, ...] = ()
    match: str = "name"   # "name": the kernel's own name; "template": with template arguments


@dataclass(frozen=True)
class ContextRule:
    pattern: re.Pattern
    category: str
    from_categories: frozenset[str]


@dataclass(frozen=True)
class PositionRule:
    """Dispatch/combine from launch order (see [position] in rules.toml)."""

    from_categories: frozenset[str]
    experts: frozenset[str]
    anchors: frozenset[str]
    before_experts: str
    after_experts: str


@dataclass
class RuleSet:
    """Ordered name rules, launch-context rules, and each category's role and help text."""

    rules: list[Rule] = field(default_factory=list)
    context: list[ContextRule] = field(default_factory=list)
    position: PositionRule | None = None
    roles: dict[str, str] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)

    def classify_name(self, name: str, kind: str) -> str:
        """Category of one GPU event name: the first rule whose pattern is found in the part
        of the name the rule looks at (memcpy/memset names are used as they are)."""
        name = searchable(name)
        if kind in _KERNEL_KINDS:
            seen = {"name": name, "template": name}
        else:
            seen = {"name": own_name(name), "template": function_name(name)}
        for r in self.rules:
            if r.kinds and kind not in r.kinds:
                continue
            if r.pattern.search(seen[r.match]):
                return r.category
        return UNCLASSIFIED

    def role(self, category: str) -> str:
        return self.roles.get(category, "compute")

    def matches_context(self, name: str) -> bool:
        """Could a context rule use this CPU range's name? (pre-filters CPU ops)."""
        name = searchable(name)
        return any(c.pattern.search(name) for c in self.context)


def _parse(data: dict, source: str) -> RuleSet:
    rs = RuleSet()
    cats = data.get("categories", {})
    if not isinstance(cats, dict):
        raise UsageError(f"{source}: [categories] must be a table")
    for name, spec in cats.items():
        if not isinstance(spec, dict):
            raise UsageError(f"{source}: category {name!r} must be a table with a role")
        role = spec.get("role", "compute")
        if role not in ROLES:
            raise UsageError(f"{source}: category {name!r} has role {role!r}; use one of {', '.join(ROLES)}")
        rs.roles[name] = role
        rs.help[name] = str(spec.get("help", ""))
    for i, spec in enumerate(data.get("rule", [])):
        match = spec.get("match", "name") if isinstance(spec, dict) else "name"
        if match not in MATCH_ON:
            raise UsageError(f"{source}: rule {i + 1}: match = {match!r}; use one of {', '.join(MATCH_ON)}")
        rs.rules.append(Rule(_regex(spec, source, f"rule {i + 1}"), _category(spec, source, f"rule {i + 1}"),
                             tuple(spec.get("kinds", ())), match))
    for i, spec in enumerate(data.get("context", [])):
        rs.context.append(ContextRule(_regex(spec, source, f"context rule {i + 1}"),
                                      _category(spec, source, f"context rule {i + 1}"),
                                      frozenset(spec.get("from", ()))))
    pos = data.get("position")
    if pos is not None:
        if not isinstance(pos, dict):
            raise UsageError(f"{source}: [position] must be a table")
        try:
            rs.position = PositionRule(frozenset(pos["from"]), frozenset(pos["experts"]), frozenset(pos.get("anchors", ())),
                                       str(pos["before_experts"]), str(pos["after_experts"]))
        except KeyError as e:
            raise UsageError(f"{source}: [position] needs {e.args[0]!r}") from None
    return rs


def _regex(spec: dict, source: str, where: str) -> re.Pattern:
    if not isinstance(spec, dict) or "pattern" not in spec:
        raise UsageError(f"{source}: {where} needs a 'pattern'")
    try:
        return re.compile(str(spec["pattern"]))
    except re.error as e:
        raise UsageError(f"{source}: {where}: bad regular expression {spec['pattern']!r} ({e})") from None


def _category(spec: dict, source: str, where: str) -> str:
    cat = spec.get("category")
    if not isinstance(cat, str) or not cat:
        raise UsageError(f"{source}: {where} needs a 'category'")
    return cat


def default_rules() -> RuleSet:
    text = resources.files("traceview.classify").joinpath("rules.toml").read_text()
    return _parse(tomllib.loads(text), "rules.toml")


def load_rules(user_file: str | Path | None = None) -> RuleSet:
    """The shipped rules, with a user's file layered on top (its rules are tried first)."""
    base = default_rules()
    if user_file is None:
        return base
    path = Path(user_file)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such rules file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read rules file ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    user = _parse(data, str(path))
    roles = {**base.roles, **user.roles}
    helps = {**base.help, **user.help}
    for i, r in enumerate(user.rules + user.context):  # a typo must not quietly become a new compute category
        if r.category not in roles and r.category != UNCLASSIFIED:
            kind = "rule" if i < len(user.rules) else "context rule"
            n = i + 1 if i < len(user.rules) else i - len(user.rules) + 1
            raise UsageError(f"{path}: {kind} {n}: category {r.category!r} is not declared: add it under "
                             f'[categories] ("{r.category}" = {{ role = "compute" }}) or use a known one')
    return RuleSet(user.rules + base.rules, user.context + base.context, user.position or base.position, roles, helps)


#: Names longer than this are matched on their first and last halves of it: real kernel names
#: are a few KB at most, and a pattern's backtracking over a 500 MB name would never end.
SEARCHABLE_CHARS = 1 << 16


def searchable(name: str) -> str:
    if len(name) <= SEARCHABLE_CHARS:
        return name
    half = SEARCHABLE_CHARS // 2
    return name[:half] + " … " + name[-half:]
