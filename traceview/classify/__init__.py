"""Kernel taxonomy: ordered name rules (data, in rules.toml) plus launch-context rules."""

from .classifier import classify
from .names import demangle, display_name, function_name, own_name
from .rules import ROLES, UNCLASSIFIED, RuleSet, default_rules, load_rules

__all__ = ["ROLES", "UNCLASSIFIED", "RuleSet", "classify", "default_rules", "demangle", "display_name",
           "function_name", "load_rules", "own_name"]
