#!/usr/bin/env python3
"""Derive fixtures/captures/decode_tbo_cudagraph_annotated.json.gz: the real CUDA-graph TBO decode
capture as PyTorch 2.12+ would have written it with graph kernel annotations.

The device's torch (2.11) emits no ``graph node id`` and cannot annotate graph kernels
(``torch.cuda.graph(..., enable_annotations=True)`` + ``torch.cuda._graph_annotations.mark_kernels``
need CUDA >= 13.1 tools ids), so the annotated trace is derived here from two real captures:

1. ``decode_tbo_cudagraph.json.gz`` (one graph replay per decode step, no annotation inside) gets a
   ``graph node id`` on every replayed kernel and device copy: the same id for the same graph node in
   every replay.  A node is identified by its replay stream and its place on that stream (a graph
   node always runs on the same branch, in capture order; checked below on all replays).
2. The node's annotation comes from the eager twin ``decode_tbo_cudagraph_eager.json.gz`` (the same
   step launched eagerly under ``record_function`` ranges mbN > layer.J > phase): a kernel node is the
   eager kernel the capture script's replay mapping names (MANIFEST ``replay_mapping``: k-th kernel of
   that name in GPU order), a copy node the k-th device copy of the step (checked: in capture order on
   every branch).  The annotation is what nested ``mark_kernels`` scopes give after
   ``resolve_pending_annotations``: one merged dict, inner scope first, ``{"str": phase, "layer": J,
   "microbatch": N}``, plus ``"stream"`` as ``mark_stream`` adds it (here the replay stream itself, so
   the streams stay those of the capture).  Node ids are the eager launch order (capture order); the
   tools id is ``graph_exec_id << 32 | node_id`` as ``remap_to_exec_graph`` makes it.
3. torch's own post-processor merges them: ``torch.cuda._annotate_cuda_graph_trace.annotate_trace``
   (torch CPU is enough).  Memsets are not annotatable node types in ``mark_kernels`` and keep no node id.

Usage (from the repository root; writes the fixture and its MANIFEST entry):
    python scripts/capture/annotate_graph_fixture.py
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAP = ROOT / "fixtures" / "captures"
GRAPH, EAGER = CAP / "decode_tbo_cudagraph.json.gz", CAP / "decode_tbo_cudagraph_eager.json.gz"
OUT = CAP / "decode_tbo_cudagraph_annotated.json.gz"
GRAPH_EXEC_ID = 1
LABEL = re.compile(r"^(?:mb(\d+)|layer\.(\d+)|(attn|mlp|gate|dispatch|shared_expert|experts|combine|final_norm))$")


def _load(path: Path) -> dict:
    return json.loads(gzip.open(path).read())


def _replays(doc: dict) -> list[dict[str, list[dict]]]:
    """Per cudaGraphLaunch (in launch order): its kernels and its device copies, each in GPU start order."""
    ev = doc["traceEvents"]
    launches = sorted((e for e in ev if e.get("cat") == "cuda_runtime" and e["name"].startswith("cudaGraphLaunch")),
                      key=lambda e: e["ts"])
    out = []
    for g in launches:
        c = g["args"]["correlation"]
        out.append({kind: sorted((e for e in ev if e.get("cat") == kind and e["args"].get("correlation") == c),
                                 key=lambda e: e["ts"]) for kind in ("kernel", "gpu_memcpy")})
    return out


def _eager_labels(doc: dict) -> dict[str, list[dict]]:
    """Kernels and device copies of the first profiled eager step (GPU start order) with the
    labels of the record_function ranges open around their launch: mb, layer, phase (innermost)."""
    ev = doc["traceEvents"]
    launch = {e["args"]["correlation"]: e for e in ev
              if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in (e.get("args") or {})}
    ranges = [e for e in ev if e.get("cat") == "user_annotation" and e.get("ph") == "X"]
    step = min((e for e in ranges if e["name"].startswith("ProfilerStep#")), key=lambda e: e["ts"])
    out: dict[str, list[dict]] = {}
    for kind in ("kernel", "gpu_memcpy"):
        rows = []
        for k in sorted((e for e in ev if e.get("cat") == kind), key=lambda e: e["ts"]):
            la = launch.get(k["args"].get("correlation"))
            if la is None or not step["ts"] <= la["ts"] <= step["ts"] + step["dur"]:
                continue
            lab: dict = {}
            for a in sorted((a for a in ranges if a["tid"] == la["tid"] and a["ts"] <= la["ts"] <= a["ts"] + a["dur"]),
                            key=lambda a: -a["dur"]):  # outermost first: the innermost phase wins
                m = LABEL.match(a["name"])
                if m and m.group(1) is not None:
                    lab["microbatch"] = int(m.group(1))
                elif m and m.group(2) is not None:
                    lab["layer"] = int(m.group(2))
                elif m:
                    lab["phase"] = m.group(3)
            rows.append({"name": k["name"], "launch_ts": la["ts"], **lab})
        out[kind] = rows
    return out


def _node_ids(replays: list[dict], eager_index: dict[str, list[list[int]]]) -> dict[str, dict[tuple, int]]:
    """(stream, place on the stream) -> eager index, per kind; the same in every replay and in
    capture order on every stream, or this derivation is wrong and stops."""
    out: dict[str, dict[tuple, int]] = {}
    for kind in ("kernel", "gpu_memcpy"):
        first = None
        for r, rep in enumerate(replays):
            per_stream: dict[int, list[int]] = {}
            for e, idx in zip(rep[kind], eager_index[kind][r]):
                per_stream.setdefault(e["tid"], []).append(idx)
            for s, seq in per_stream.items():
                placed = [i for i in seq if i >= 0]
                assert placed == sorted(placed), f"{kind}: replay {r} stream {s} is not in capture order"
            nodes = {(s, i): idx for s, seq in per_stream.items() for i, idx in enumerate(seq)}
            assert first is None or nodes == first, f"{kind}: replay {r} differs from replay 0"
            first = nodes
        out[kind] = first or {}
    return out


def _copy_index(replays: list[dict], eager: list[dict]) -> list[list[int]]:
    """The eager copy each replayed copy is: the k-th copy of the step, GPU order; a copy beyond the
    eager step's (the graph's own output copy) gets none (-1)."""
    return [[k if k < len(eager) else -1 for k in range(len(rep["gpu_memcpy"]))] for rep in replays]


def build() -> tuple[dict, dict]:
    import torch.cuda._annotate_cuda_graph_trace as post  # torch CPU is enough: pure Python

    manifest = json.loads((CAP / "MANIFEST.json").read_text())
    entry = next(e for e in manifest["files"] if e.get("scenario") == "decode_tbo_cudagraph")
    mapping = entry["replay_mapping"]
    doc, eager = _load(GRAPH), _eager_labels(_load(EAGER))
    replays = _replays(doc)
    for rep, n in zip(replays, mapping["kernels_per_replay"]):
        assert len(rep["kernel"]) == n
    # the kernel labels read here agree with the capture script's own reading
    assert [(r.get("microbatch"), r.get("layer"), r.get("phase")) for r in eager["kernel"]] == \
        [(m, layer, p) for _, _, m, layer, p in mapping["eager_step"]]
    index = {"kernel": mapping["replay_kernel_to_eager_index"], "gpu_memcpy": _copy_index(replays, eager["gpu_memcpy"])}
    nodes = _node_ids(replays, index)
    # node ids in capture order (the eager launch order): kernels and copies of the step interleaved
    order = sorted([("kernel", i) for i in range(len(eager["kernel"]))]
                   + [("gpu_memcpy", i) for i in range(len(eager["gpu_memcpy"]))],
                   key=lambda x: eager[x[0]][x[1]]["launch_ts"])
    node_of = {x: n + 1 for n, x in enumerate(order)}
    extra = len(order) + 1  # copies outside the eager step (the graph's output copy): nodes past the step's
    annotations: dict[int, list] = {}
    for kind, by_place in nodes.items():
        for (stream, place), idx in sorted(by_place.items()):
            node = node_of[(kind, idx)] if idx >= 0 else extra
            if idx < 0:
                extra += 1
            tools_id = GRAPH_EXEC_ID << 32 | node
            lab = eager[kind][idx] if idx >= 0 else {}
            # nested mark_kernels scopes merged by resolve_pending_annotations (inner scope's keys first)
            ann = {**({"str": lab["phase"]} if "phase" in lab else {}),
                   **({"layer": lab["layer"]} if "layer" in lab else {}),
                   **({"microbatch": lab["microbatch"]} if "microbatch" in lab else {}),
                   "stream": stream}
            annotations[tools_id] = [ann]
            for rep in replays:
                e = [x for x in rep[kind] if x["tid"] == stream][place]
                e["args"]["graph node id"] = tools_id
    with redirect_stdout(io.StringIO()):
        annotated = post.annotate_trace(doc, annotations)
    assert annotated == sum(len(rep["kernel"]) + len(rep["gpu_memcpy"]) for rep in replays), annotated

    out = copy.deepcopy({k: v for k, v in entry.items() if k != "replay_mapping"})
    out.update(scenario="decode_tbo_cudagraph_annotated", file=OUT.name, enable_annotations="derived",
               generated_by="scripts/capture/annotate_graph_fixture.py",
               derived_from=[GRAPH.name, EAGER.name],
               derivation=("graph node ids per (replay stream, place on it), annotations from the eager twin's "
                           "record_function labels (kernels via replay_mapping, copies by order), merged by "
                           "torch.cuda._annotate_cuda_graph_trace.annotate_trace; memsets have no node id"),
               annotated_events=annotated, annotated_nodes=len(annotations))
    return doc, out


def main() -> None:
    doc, entry = build()
    raw = json.dumps(doc).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:  # mtime 0: the same bytes on every run
        f.write(raw)
    OUT.write_bytes(buf.getvalue())
    entry.update(uncompressed_bytes=len(raw), compressed_bytes=len(buf.getvalue()))
    mpath = CAP / "MANIFEST.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"] = [e for e in manifest["files"] if e.get("scenario") != entry["scenario"]] + [entry]
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {OUT} ({len(buf.getvalue()):,} bytes, {entry['annotated_events']:,} annotated events, "
          f"{entry['annotated_nodes']} nodes)")


if __name__ == "__main__":
    main()
