"""Which rank a trace file is, from its header or, failing that, its file name.

The serving stacks name per-rank traces in their own ways (../shared/docs/field-notes.md §3):

- SGLang: ``{id}-TP-{tp}-DP-{dp}-PP-{pp}-EP-{ep}.trace.json.gz`` (older: ``{id}-TP-{tp}[-{stage}]``)
- vLLM: ``[prefix_]dp0_pp0_tp0_dcp0_ep0_rank0.<ns>.pt.trace.json.gz`` (older ``{id}-rank-{rank}``)
- TensorRT-LLM: ``<base>-rank-<N><ext>``
- the PyTorch TensorBoard handler: ``<worker>.<time_ns>.pt.trace.json[.gz]`` (the worker name is
  free text; ``rank<N>`` inside it is honoured)

A header's ``distributedInfo`` (rank, world_size) wins over any file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: SGLang's per-rank file: the parallel coordinates after the profile id
_SGLANG = re.compile(r"-TP-(?P<tp>\d+)(?:-DP-(?P<dp>\d+))?(?:-PP-(?P<pp>\d+))?(?:-EP-(?P<ep>\d+))?(?=[-.])")
#: vLLM's worker suffix: dp0_pp0_tp0_dcp0_ep0_rank0 (fields may be missing in older releases)
_VLLM_RANK = re.compile(r"(?:^|[_.-])rank[-_]?(?P<rank>\d+)(?=[._-]|$)", re.IGNORECASE)
_VLLM_PART = re.compile(r"(?:^|_)(?P<key>dp|pp|tp|dcp|ep)(?P<val>\d+)(?=_|\.|$)")
#: TensorRT-LLM and older vLLM: <base>-rank-<N>
_DASH_RANK = re.compile(r"-rank-(?P<rank>\d+)(?=[._-]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class RankIdentity:
    """A rank and where it came from (``header``, ``sglang file name``, ...)."""

    rank: int | None
    source: str | None = None
    coords: dict[str, int] = field(default_factory=dict)  # tp/dp/pp/ep/dcp as the file name gives them


def identity_from_name(name: str) -> RankIdentity:
    """The rank a serving stack's file name encodes, or ``RankIdentity(None)``."""
    m = _DASH_RANK.search(name)
    if m:
        return RankIdentity(int(m["rank"]), "file name (-rank-N)")
    m = _VLLM_RANK.search(name)
    if m:
        coords = {p["key"]: int(p["val"]) for p in _VLLM_PART.finditer(name.split(".")[0])}
        return RankIdentity(int(m["rank"]), "vllm file name" if coords else "file name (rankN)", coords)
    m = _SGLANG.search(name)
    if m:
        coords = {k: int(v) for k, v in m.groupdict().items() if v is not None}
        # SGLang numbers the file by its TP rank; with DP attention / EP the global rank is the
        # EP rank when given (one process per GPU), else the TP rank
        rank = coords.get("ep", coords["tp"]) if "ep" in coords else coords["tp"]
        return RankIdentity(rank, "sglang file name", coords)
    return RankIdentity(None)
