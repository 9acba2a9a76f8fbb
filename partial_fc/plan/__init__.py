"""Capacity planning for the sharded head: per-rank memory before anything is allocated."""

from partial_fc.plan.advice import require_fits, suggestions
from partial_fc.plan.memory import Plan, largest_classes, plan_memory
from partial_fc.plan.units import format_bytes, parse_bytes

__all__ = ["Plan", "format_bytes", "largest_classes", "parse_bytes", "plan_memory", "require_fits", "suggestions"]
