"""Naming patterns that turn annotation names into segment levels (configurable).

A record_function / NVTX range name is matched against each level's patterns in order:
``ProfilerStep#3`` is an iteration, ``mb1`` a micro-batch, ``layer.7`` a layer,
``prefill`` / ``decode_step`` a stage; any other user range (``attn``, ``dispatch``,
DeepSeek's ``attn(F)``) is a phase, unless it is one of the library ranges that frameworks
add on their own (``nccl:all_to_all``, ``c10d::...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..classify.rules import tomllib
from ..errors import UsageError

LEVELS = ("iteration", "stage", "microbatch", "layer", "phase")


@dataclass
class LevelPatterns:
    iteration: list[str] = field(default_factory=lambda: [r"^ProfilerStep#(\d+)$", r"(?i)^(?:iter|iteration|step)[._#-]?(\d+)$"])
    stage: list[str] = field(default_factory=lambda: [
        r"(?i)^(prefill|extend|decode)(?:_step|_graph|[._#-]?\d+)*$",
        r"(?i)^forward_(extend|decode)$",
        # SGLang scheduler: step[EXTEND bs=15 toks=15360], step[DECODE bs=32]
        r"^step\[(EXTEND|DECODE|MIXED|IDLE)\b",
        # vLLM model runner: execute_<tokens>_context_<n>(...)_generation_<m>(...), newer releases
        # without the token count: execute_context_1(888_788544)_generation_0(0)
        r"^execute_(?:\d+_)?(?:(context)_[1-9]\d*|context_0)\(.*\)_(?:(generation)_[1-9]\d*|generation_0)\(",
    ])
    microbatch: list[str] = field(default_factory=lambda: [
        r"(?i)^(?:mb|micro_?batch|ubatch|ub|tbo|dbo)[._#-]?(\d+)$",
        # SGLang two-batch overlap with SGLANG_OPERATIONS_ENABLE_PROFILE=1: a<k> / b<k> stage ranges
        r"^([ab])\d+$",
    ])
    layer: list[str] = field(default_factory=lambda: [r"(?i)^(?:layer|layers|decoder_layer|block)[._#-]?(\d+)$",
                                                       r"(?i)(?:^|\.)layers\.(\d+)$"])
    #: ranges that are never phases: added by libraries, not by the user
    not_phase: list[str] = field(default_factory=lambda: [r"^nccl:", r"^c10d", r"^aten::", r"^cuda", r"^record_param",
                                                           r"^PyTorch Profiler", r"^##", r"^Optimizer"])

    def compiled(self) -> dict[str, list[re.Pattern]]:
        try:
            return {lvl: [re.compile(p) for p in getattr(self, lvl)]
                    for lvl in ("iteration", "stage", "microbatch", "layer", "not_phase")}
        except re.error as e:
            raise UsageError(f"bad segment pattern: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "LevelPatterns":
        """``[segments]`` table of a TOML file: lists of regexes per level replace the defaults."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"{path}: cannot read segment patterns ({e})") from None
        table = data.get("tool", {}).get("traceview", {}).get("segments", data.get("segments", {}))
        lp = cls()
        for key, val in table.items():
            if not hasattr(lp, key) or not isinstance(val, list):
                raise UsageError(f"{path}: unknown segment level {key!r} (use {', '.join(LEVELS[:-1])}, not_phase)")
            for v in val:  # a bad pattern is an error now, not at the first view that needs it
                try:
                    re.compile(str(v))
                except re.error as e:
                    raise UsageError(f"{path}: segment level {key!r}: bad regular expression {str(v)!r} ({e})") from None
            setattr(lp, key, [str(v) for v in val])
        return lp


#: one stage vocabulary whatever the stack calls it (vLLM: context / generation requests;
#: SGLang: EXTEND, a prefill that may reuse a cached prefix)
STAGE_WORDS = {"context": "prefill", "generation": "decode", "extend": "prefill"}
#: SGLang's two-batch-overlap stage prefixes: a = first micro-batch, b = second
MICROBATCH_LETTERS = {"a": "mb0", "b": "mb1"}


#: keys of a CUDA-graph kernel annotation (``mark_kernels({"layer": 3, "microbatch": 0})``, merged into
#: the kernel's args by ``torch.cuda._annotate_cuda_graph_trace``) that name a level
ARG_LEVELS = {"iteration": "iteration", "iter": "iteration", "step": "iteration", "stage": "stage",
              "microbatch": "microbatch", "micro_batch": "microbatch", "mb": "microbatch", "ubatch": "microbatch",
              "layer": "layer", "phase": "phase"}
#: keys whose value is a scope name, read as a record_function range name is (a string scope
#: becomes {"str": name} in mark_kernels; the post-processor writes other objects as "annotation")
TEXT_KEYS = ("str", "annotation", "name")


def level_of_arg(key: str, value: object, pats: dict[str, list[re.Pattern]]) -> tuple[str, str] | None:
    """(level, label) for one annotation arg of a CUDA-graph kernel, by the same patterns as
    ``level_of``: a scope name as a range name; ``{"layer": 3}`` as ``layer.3``, ``{"stage":
    "decode"}`` as ``decode``; a key that names no level gives its value as a phase (as any user
    range), or nothing for library names."""
    text = str(value)
    if key in TEXT_KEYS:
        return level_of(text, pats)
    want = ARG_LEVELS.get(key.lower())
    for name in (text, f"{key}.{text}"):
        got = level_of(name, pats)
        if got is not None and got[0] != "phase" and want in (None, got[0]):
            return got
    if want == "microbatch":
        return want, f"mb{int(text)}" if text.isdigit() else text
    if want is not None:
        return want, text
    return level_of(text, pats)


def level_of(name: str, pats: dict[str, list[re.Pattern]]) -> tuple[str, str] | None:
    """(level, label) for an annotation name; None for library ranges.

    The label is the pattern's captured group (several groups: the non-empty ones joined
    with '+'; none: the whole name)."""
    for lvl in ("iteration", "microbatch", "layer", "stage"):
        for p in pats[lvl]:
            m = p.search(name)
            if m:
                groups = [g for g in m.groups() if g]
                label = "+".join(groups) if groups else name
                if lvl == "microbatch":
                    label = f"mb{int(label)}" if label.isdigit() else MICROBATCH_LETTERS.get(label, label)
                elif lvl == "stage":
                    label = "+".join(STAGE_WORDS.get(w, w) for w in label.lower().split("+"))
                return lvl, label
    for p in pats["not_phase"]:
        if p.search(name):
            return None
    return "phase", name
