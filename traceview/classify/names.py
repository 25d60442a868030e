"""A kernel's own name: demangled, without return type, parameter list or wrapper templates.

Kernel names in traces are C++ signatures (``void ns::f<T, 4>(float*, ...)``), sometimes
still mangled (``_ZN7cutlass13device_kernel...``, ROCm traces), and often wrapped:
``cutlass::device_kernel<flash::FlashAttnFwdSm90<...>>`` is FA3, ``ck_tile::kentry<2,
ck_tile::FmhaBatchPrefill...>`` is CK's attention.  Rules matched on the whole string see
argument types (``fbgemm_gpu::FixedDivisor``, ``flashinfer::QuantizationSF...``) and
template parameters of unrelated libraries, so they match on these parts instead:

- ``function_name``: demangled, return type and parameter list removed, template arguments
  kept (``deep_ep::internode_ll::dispatch<true, 3, 10, 7168>``): for the few rules that need
  them (``match = "template"`` in rules.toml);
- ``own_name``: ``function_name`` with every template argument list removed and known wrapper
  templates replaced by the kernel they wrap (``flash::FlashAttnFwdSm90``): what generic rules
  see;
- ``display_name``: what tables and HTML show (``function_name``; the full demangled
  signature is ``demangle``).

Demangling uses LLVM's demangler (through ``pydemumble``), which knows the ``DF16b``
(bfloat16) extension that ROCm names carry.
"""

from __future__ import annotations

import functools

#: templates whose first type argument is the real kernel (its own name is the argument's)
WRAPPERS = frozenset({
    "cutlass::device_kernel", "cutlass::Kernel", "cutlass::Kernel2", "ck_tile::kentry",
    "at::cuda::detail::enable_3x_kernel_for_sm9x", "at::cuda::detail::enable_3x_kernel_for_sm10",
    "flash::enable_sm90_or_later", "flash::enable_sm80_to_sm89", "cutlass::arch::enable_sm90_or_later",
})

_OPEN = {"<": ">", "(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}


@functools.lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """The demangled name (unchanged when not an Itanium ``_Z`` name or not demanglable)."""
    if not name.startswith(("_Z", "__Z")):
        return name
    try:
        import pydemumble
    except ImportError:  # pragma: no cover - a core dependency; keep the raw name rather than fail
        return name
    try:
        out = pydemumble.demangle(name).strip()
    except Exception:  # noqa: BLE001 - any failure: the raw name is still a name
        return name
    return out or name


def _depth_scan(s: str):
    """(index, char, depth before char) for each char; ``operator<``/``->`` are not brackets."""
    depth = 0
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "-" and i + 1 < n and s[i + 1] == ">":
            yield i, c, depth
            yield i + 1, ">", depth
            i += 2
            continue
        if s.startswith("operator", i):
            # operator()/operator<</operator<=>/...: skip the operator's own symbol
            j = i + len("operator")
            yield from ((k, s[k], depth) for k in range(i, j))
            m = j
            while m < n and s[m] == " ":
                m += 1
            for sym in ("()", "[]", "<=>", "<<=", ">>=", "<<", ">>", "<=", ">=", "<", ">", "->"):
                if s.startswith(sym, m):
                    yield from ((k, "_", depth) for k in range(j, m + len(sym)))
                    i = m + len(sym)
                    break
            else:
                i = j
            continue
        if c in _OPEN:
            yield i, c, depth
            depth += 1
        elif c in _CLOSE:
            depth = max(0, depth - 1)
            yield i, c, depth
        else:
            yield i, c, depth
        i += 1


def _strip_params(s: str) -> str:
    """Remove a trailing top-level ``(...)`` parameter list (and cv/ref qualifiers after it)."""
    t = s.rstrip()
    for q in (" const", " volatile", " &&", " &"):
        while t.endswith(q):
            t = t[: -len(q)].rstrip()
    if not t.endswith(")"):
        return s
    open_at = None
    for i, c, d in _depth_scan(t):
        if c == "(" and d == 0:
            open_at = i
        elif c == ")" and d == 0 and i == len(t) - 1:
            break
    if open_at is None or open_at == 0:
        return s
    head = t[:open_at]
    # "(anonymous namespace)" at the end is a scope, not a parameter list
    if t[open_at:].startswith("(anonymous namespace)") and t.endswith("(anonymous namespace)"):
        return s
    return head.rstrip()


def _strip_return_type(s: str) -> str:
    """Drop what stands before the qualified name (``void``, ``std::enable_if<...>::type``)."""
    last_space = -1
    for i, c, d in _depth_scan(s):
        if c == " " and d == 0:
            last_space = i
    return s[last_space + 1:] if last_space >= 0 else s


@functools.lru_cache(maxsize=65536)
def function_name(name: str) -> str:
    """Demangled qualified name with template arguments, without return type and parameters."""
    s = demangle(name).strip()
    if "(" not in s and " " not in s:
        return s
    head = _strip_params(s)
    if "::" not in s and "<" not in s and " " in head and not head.startswith("void "):
        return s  # not a C++ signature ("Memcpy DtoD (Device -> Device)")
    return _strip_return_type(head)


def _template_args(s: str) -> tuple[str, list[str]]:
    """(``s`` with top-level ``<...>`` removed, the top-level template arguments in order)."""
    base, args, cur, depth = [], [], [], 0
    for _, c, d in _depth_scan(s):
        if c == "<" and d == 0:
            depth = 1
            cur = []
            continue
        if depth:
            if c == ">" and d == 0:
                depth = 0
                args.append("".join(cur).strip())
                continue
            if c == "," and d == 1:
                args.append("".join(cur).strip())
                cur = []
                continue
            cur.append(c)
            continue
        base.append(c)
    return "".join(base), args


@functools.lru_cache(maxsize=65536)
def own_name(name: str) -> str:
    """The kernel's own qualified name: no template arguments, wrappers unwrapped."""
    s = function_name(name)
    for _ in range(8):  # wrappers nest (device_kernel<enable_3x_kernel_for_sm9x<GemmUniversal<...>>>)
        base, args = _template_args(s)
        base = base.replace("::::", "::").strip()
        if base not in WRAPPERS:
            return base
        inner = next((a for a in args if a and not a.lstrip("-(").split(")")[-1].isdigit()
                      and not a[0].isdigit() and a not in ("true", "false")), None)
        if inner is None:
            return base
        s = _strip_return_type(inner.strip())
    return _template_args(s)[0]


def display_name(name: str) -> str:
    """The name to show a reader (tables, HTML): demangled, without return type and parameter
    list, template arguments kept (they tell kernel variants apart)."""
    return function_name(name)
