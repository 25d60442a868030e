// The compiled fast decoder: one piece of a Kineto event array -> the kept columns.
//
// Its only job is the field-picking loop; the JSON parsing (a fully validating DOM parse)
// is simdjson's, from the system (Debian's libsimdjson-dev), never a copy of its source.
// It accepts a piece only when the piece is clean Kineto, i.e. when the pure-Python fast
// path (traceview/load/fast.py, msgspec) would accept it too, and then produces the same
// columns; on anything else (a type msgspec would reject, a string thread id on a kept
// event, -0, an escaped surrogate, a float inside "Input Dims", duplicate keys, deep
// nesting, bad UTF-8, invalid JSON) it returns None and the caller runs the Python path,
// which stays the reference.  traceview/load/native.py turns the result into a frame.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <simdjson.h>

#define TV_STR2(x) #x
#define TV_STR(x) TV_STR2(x)

using simdjson::dom::element;
using simdjson::dom::element_type;

namespace {

constexpr double kMaxAbsTimeUs = 1e17;  // decode.MAX_ABS_TIME_US
constexpr size_t kMaxDepth = 32;        // Kineto events nest ~6 deep; deeper goes to the Python path

// Set once from Python (decode.CATEGORY_ALIASES, CHROME_PHASES): one vocabulary, kept there.
std::unordered_map<std::string, int> g_aliases;  // lower-cased category -> kind code
bool g_other_phase[256];                         // phases recognized and dropped (not X, B, E)
bool g_configured = false;
unsigned g_generation = 0;  // bumped by configure(): per-thread caches of kinds start over
double g_parse_s = 0, g_walk_s = 0;

struct Columns {
  std::vector<uint8_t> kind;
  std::vector<int32_t> name;
  std::vector<int64_t> pid, tid, corr, ext, dev, stream, nbytes;
  std::vector<uint8_t> pid_ok, tid_ok, corr_ok, ext_ok, dev_ok, stream_ok, nbytes_ok;
  std::vector<double> ts, dur;
  std::vector<int32_t> dims, grid;
  // distinct texts of this piece; code 0 of dims/grid is "absent"
  std::unordered_map<std::string_view, int32_t> name_codes;
  std::vector<std::string_view> names;
  std::unordered_map<std::string, int32_t> dims_codes, grid_codes;
  std::vector<std::string> dims_texts, grid_texts;
  long long skipped[4];
  std::string scratch;

  void clear() {
    kind.clear(); name.clear();
    for (auto* v : {&pid, &tid, &corr, &ext, &dev, &stream, &nbytes}) v->clear();
    for (auto* v : {&pid_ok, &tid_ok, &corr_ok, &ext_ok, &dev_ok, &stream_ok, &nbytes_ok}) v->clear();
    ts.clear(); dur.clear(); dims.clear(); grid.clear();
    name_codes.clear(); names.clear();
    dims_codes.clear(); grid_codes.clear(); dims_texts.clear(); grid_texts.clear();
    dims_texts.emplace_back(); grid_texts.emplace_back();  // code 0
    for (auto& s : skipped) s = 0;
  }
};

struct Worker {  // one per thread: the parser's and the buffer's pages are reused piece after piece
  simdjson::dom::parser parser;
  std::vector<uint8_t> buf;
  Columns cols;
};

// Freed when its thread ends (the loader's pool threads end with the load).
thread_local std::unique_ptr<Worker> t_worker;

Worker& worker() {
  if (!t_worker) t_worker.reset(new Worker());
  return *t_worker;
}

// --- the event's fields ------------------------------------------------------------------

enum Field { PH, CAT, NAME, PID, TID, TS, DUR, ARGS, NFIELDS };
enum ArgField { CORR, STREAM, DEVICE, EXTID, DIMS, BYTES, GRID, BLOCK, GNODE, NARGS };

int field_of(std::string_view k) {
  switch (k.size()) {
    case 2: return k == "ph" ? PH : k == "ts" ? TS : -1;
    case 3: return k == "cat" ? CAT : k == "pid" ? PID : k == "tid" ? TID : k == "dur" ? DUR : -1;
    case 4: return k == "name" ? NAME : k == "args" ? ARGS : -1;
    default: return -1;
  }
}

int arg_of(std::string_view k) {
  switch (k.size()) {
    case 4: return k == "grid" ? GRID : -1;
    case 5: return k == "bytes" ? BYTES : k == "block" ? BLOCK : -1;
    case 6: return k == "stream" ? STREAM : k == "device" ? DEVICE : -1;
    case 10: return k == "Input Dims" ? DIMS : -1;
    case 11: return k == "correlation" ? CORR : k == "External id" ? EXTID : -1;
    case 13: return k == "graph node id" ? GNODE : -1;
    default: return -1;
  }
}

// ``int | None`` of msgspec (absent/null -> not ok); anything else (a float, a string, an
// integer past int64) is not clean.
bool int_field(bool present, element e, int64_t& v, uint8_t& ok) {
  v = 0;
  ok = 0;
  if (!present || e.is_null()) return true;
  if (e.type() != element_type::INT64) return false;
  v = e.get_int64().value_unsafe();
  ok = 1;
  return true;
}

// ``ts``/``dur``: a number or null; -0 (the Python path's reference keeps its sign) is left to it.
bool time_field(bool present, element e, double& v, bool& ok) {
  ok = false;
  if (!present || e.is_null()) return true;
  switch (e.type()) {
    case element_type::INT64: v = double(e.get_int64().value_unsafe()); break;
    case element_type::UINT64: v = double(e.get_uint64().value_unsafe()); break;
    case element_type::DOUBLE: v = e.get_double().value_unsafe(); break;
    default: return false;
  }
  if (v == 0.0 && std::signbit(v)) return false;
  if (!std::isfinite(v)) return false;
  ok = true;
  return true;
}

// ``bytes`` is ``int | str | None`` (some exporters write "256"): a string gets decode._int's
// treatment (under 24 characters, one optional '-' then decimal digits, within int64; else null,
// so "--5" is null); what only Python's str methods decide (non-ASCII digits) is left to the
// Python path.
bool bytes_field(bool present, element e, int64_t& v, uint8_t& ok) {
  if (!present || e.type() != element_type::STRING) return int_field(present, e, v, ok);
  v = 0;
  ok = 0;
  std::string_view s = e.get_string().value_unsafe();
  for (unsigned char ch : s)
    if (ch >= 0x80) return false;
  if (s.size() >= 24) return true;
  size_t i = 0;
  while (i < s.size() && s[i] == '-') i++;
  if (i == s.size()) return true;  // "" or "-": not decimal
  for (size_t j = i; j < s.size(); j++)
    if (s[j] < '0' || s[j] > '9') return true;
  if (i > 1) return true;  // "--5": not a number (null), as decode._int says
  // at most 23 characters: fits in __int128 without overflow
  __int128 x = 0;
  for (size_t j = i; j < s.size(); j++) x = x * 10 + (s[j] - '0');
  if (i == 1) x = -x;
  if (x < -(__int128(1) << 63) || x >= (__int128(1) << 63)) return true;
  v = int64_t(x);
  ok = 1;
  return true;
}

void put_string(std::string_view s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20) {
      static const char hex[] = "0123456789abcdef";
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += char(c);
    }
  }
  out += '"';
}

// JSON text of a value for Python's json.loads (which the Python side then re-dumps exactly
// as the reference does); floats are left to the Python path (their text would change).
bool put_json(element e, std::string& out) {
  switch (e.type()) {
    case element_type::ARRAY: {
      out += '[';
      bool first = true;
      simdjson::dom::array arr = e.get_array().value_unsafe();
      for (element x : arr) {
        if (!first) out += ',';
        first = false;
        if (!put_json(x, out)) return false;
      }
      out += ']';
      return true;
    }
    case element_type::OBJECT: {
      out += '{';
      bool first = true;
      simdjson::dom::object obj = e.get_object().value_unsafe();
      for (auto kv : obj) {
        if (!first) out += ',';
        first = false;
        put_string(kv.key, out);
        out += ':';
        if (!put_json(kv.value, out)) return false;
      }
      out += '}';
      return true;
    }
    case element_type::INT64: out += std::to_string(e.get_int64().value_unsafe()); return true;
    case element_type::UINT64: out += std::to_string(e.get_uint64().value_unsafe()); return true;
    case element_type::STRING: put_string(e.get_string().value_unsafe(), out); return true;
    case element_type::BOOL: out += e.get_bool().value_unsafe() ? "true" : "false"; return true;
    case element_type::NULL_VALUE: out += "null"; return true;
    default: return false;  // DOUBLE
  }
}

int32_t code_of(std::unordered_map<std::string, int32_t>& codes, std::vector<std::string>& texts,
                const std::string& text) {
  auto it = codes.find(text);
  if (it != codes.end()) return it->second;
  int32_t c = int32_t(texts.size());
  texts.push_back(text);
  codes.emplace(text, c);
  return c;
}

// Category -> kind code; -1: not kept; -2: not clean (non-ASCII: Python's str.lower() could
// map it onto a kept category, e.g. the Kelvin sign).
int kind_lookup(std::string_view cat);

// (categories repeat: the few seen are remembered per thread)
thread_local std::vector<std::pair<std::string, int>> t_kinds;

thread_local unsigned t_kinds_generation = 0;

int kind_of(std::string_view cat) {
  if (t_kinds_generation != g_generation) {  // configure() ran since
    t_kinds.clear();
    t_kinds_generation = g_generation;
  }
  for (const auto& [c, k] : t_kinds)
    if (c == cat) return k;
  int k = kind_lookup(cat);
  if (t_kinds.size() < 64) t_kinds.emplace_back(cat, k);
  return k;
}

int kind_lookup(std::string_view cat) {
  char low[32];
  if (cat.size() >= sizeof low) {
    for (unsigned char c : cat)
      if (c >= 0x80) return -2;
    return -1;
  }
  for (size_t i = 0; i < cat.size(); i++) {
    unsigned char c = cat[i];
    if (c >= 0x80) return -2;
    low[i] = char((c >= 'A' && c <= 'Z') ? c + 32 : c);
  }
  auto it = g_aliases.find(std::string(low, cat.size()));
  return it == g_aliases.end() ? -1 : it->second;
}

// The loop: false = not clean (the caller returns None).
bool walk(element root, Columns& c) {
  if (root.type() != element_type::ARRAY) return false;
  element f[NFIELDS];
  element a[NARGS];
  simdjson::dom::array events = root.get_array().value_unsafe();
  for (element ev : events) {
    if (ev.type() != element_type::OBJECT) return false;
    unsigned seen = 0;
    simdjson::dom::object obj = ev.get_object().value_unsafe();
    for (auto kv : obj) {
      int i = field_of(kv.key);
      if (i < 0) continue;
      if (seen & (1u << i)) return false;  // a duplicate key: left to the reference
      seen |= 1u << i;
      f[i] = kv.value;
    }
    if (!(seen & (1u << PH)) || f[PH].type() != element_type::STRING) return false;
    std::string_view ph(f[PH]);
    if (ph.size() != 1) return false;
    if (ph[0] != 'X') {
      if (!g_other_phase[(unsigned char)ph[0]]) return false;  // B/E pairs, unknown phases
      continue;                                                // recognized, dropped
    }
    auto has = [&](int i) { return (seen & (1u << i)) != 0; };
    // msgspec's types, on every X event (kept or not)
    std::string_view cat, name;
    bool has_cat = has(CAT) && !f[CAT].is_null(), has_name = has(NAME) && !f[NAME].is_null();
    if (has_cat) {
      if (f[CAT].type() != element_type::STRING) return false;
      cat = f[CAT].get_string().value_unsafe();
    }
    if (has_name) {
      if (f[NAME].type() != element_type::STRING) return false;
      name = f[NAME].get_string().value_unsafe();
    }
    bool str_thread = false;
    for (int i : {PID, TID}) {
      if (!has(i) || f[i].is_null()) continue;
      auto t = f[i].type();
      if (t == element_type::STRING) str_thread = true;
      else if (t != element_type::INT64) return false;
    }
    unsigned aseen = 0;
    if (has(ARGS)) {
      if (f[ARGS].type() != element_type::OBJECT) return false;
      simdjson::dom::object args = f[ARGS].get_object().value_unsafe();
      for (auto kv : args) {
        int i = arg_of(kv.key);
        if (i < 0) continue;
        if (aseen & (1u << i)) return false;
        aseen |= 1u << i;
        a[i] = kv.value;
      }
      for (int i : {CORR, STREAM, DEVICE, EXTID, BYTES}) {
        if (!(aseen & (1u << i)) || a[i].is_null()) continue;
        if (i == BYTES && a[i].type() == element_type::STRING) continue;  // see bytes_field
        if (a[i].type() != element_type::INT64) return false;
      }
      // a CUDA-graph node: its annotation args (any key) are read by the Python path
      if ((aseen & (1u << GNODE)) && !a[GNODE].is_null() &&
          !(a[GNODE].type() == element_type::INT64 && a[GNODE].get_int64().value_unsafe() == 0))
        return false;
    }
    auto ahas = [&](int i) { return (aseen & (1u << i)) != 0; };
    if (!has_cat) continue;
    int kind = kind_of(cat);
    if (kind == -2) return false;
    if (kind < 0) continue;
    // a kept event
    if (str_thread) return false;  // string ids are numbered across the whole file
    double ts = 0, dur = 0;
    bool ts_ok, dur_ok;
    if (!time_field(has(TS), f[TS], ts, ts_ok) || !time_field(has(DUR), f[DUR], dur, dur_ok)) return false;
    int32_t dims = 0, grid = 0;
    if (ahas(DIMS)) {
      c.scratch.clear();
      if (!put_json(a[DIMS], c.scratch)) return false;
      dims = code_of(c.dims_codes, c.dims_texts, c.scratch);
    }
    if (ahas(GRID)) {
      c.scratch.clear();
      if (!put_json(a[GRID], c.scratch)) return false;
      c.scratch += '\0';
      if (ahas(BLOCK) && !put_json(a[BLOCK], c.scratch)) return false;
      grid = code_of(c.grid_codes, c.grid_texts, c.scratch);
    }
    if (!has_name) { c.skipped[0]++; continue; }
    if (!ts_ok || std::fabs(ts) > kMaxAbsTimeUs) { c.skipped[1]++; continue; }
    if (!dur_ok) { c.skipped[2]++; continue; }
    if (dur < 0 || dur > kMaxAbsTimeUs) { c.skipped[3]++; continue; }

    c.kind.push_back(uint8_t(kind));
    auto it = c.name_codes.find(name);
    if (it == c.name_codes.end()) {
      it = c.name_codes.emplace(name, int32_t(c.names.size())).first;
      c.names.push_back(name);
    }
    c.name.push_back(it->second);
    int64_t v;
    uint8_t ok;
    int_field(has(PID), f[PID], v, ok); c.pid.push_back(v); c.pid_ok.push_back(ok);
    int_field(has(TID), f[TID], v, ok); c.tid.push_back(v); c.tid_ok.push_back(ok);
    c.ts.push_back(ts);
    c.dur.push_back(dur);
    int_field(ahas(CORR), a[CORR], v, ok); c.corr.push_back(v); c.corr_ok.push_back(ok);
    int_field(ahas(EXTID), a[EXTID], v, ok); c.ext.push_back(v); c.ext_ok.push_back(ok);
    int_field(ahas(DEVICE), a[DEVICE], v, ok); c.dev.push_back(v); c.dev_ok.push_back(ok);
    int_field(ahas(STREAM), a[STREAM], v, ok); c.stream.push_back(v); c.stream_ok.push_back(ok);
    c.dims.push_back(dims);
    if (!bytes_field(ahas(BYTES), a[BYTES], v, ok)) return false;
    c.nbytes.push_back(v); c.nbytes_ok.push_back(ok);
    c.grid.push_back(grid);
  }
  return true;
}

// An escaped UTF-16 surrogate (decode._SURROGATE): the Python path repairs lone ones.
bool has_surrogate_escape(const uint8_t* p, size_t n) {
  const uint8_t* end = p + n;
  while (true) {
    auto* q = static_cast<const uint8_t*>(memchr(p, '\\', size_t(end - p)));
    if (q == nullptr || end - q < 4) return false;
    if (q[1] == 'u' && (q[2] == 'd' || q[2] == 'D') &&
        ((q[3] >= '8' && q[3] <= '9') || (q[3] >= 'a' && q[3] <= 'f') || (q[3] >= 'A' && q[3] <= 'F')))
      return true;
    p = q + (q[1] == '\\' ? 2 : 1);
  }
}

// Parse ``w.buf[0:len]`` (padded) and walk it; no Python calls (runs without the GIL).
bool decode_buffer(Worker& w, size_t len) {
  w.cols.clear();
  if (has_surrogate_escape(w.buf.data(), len)) return false;
  if (w.parser.capacity() < len || w.parser.max_depth() != kMaxDepth) {
    if (w.parser.allocate(len + (len >> 3), kMaxDepth) != simdjson::SUCCESS) return false;
  }
  element root;
  auto t0 = std::chrono::steady_clock::now();
  if (w.parser.parse(w.buf.data(), len, false).get(root) != simdjson::SUCCESS) return false;
  auto t1 = std::chrono::steady_clock::now();
  bool ok = walk(root, w.cols);
  auto t2 = std::chrono::steady_clock::now();
  g_parse_s += std::chrono::duration<double>(t1 - t0).count();
  g_walk_s += std::chrono::duration<double>(t2 - t1).count();
  return ok;
}

void release(Worker& w) {  // give back what a failed allocation left: the Python path needs it
  std::vector<uint8_t>().swap(w.buf);
  w.parser = simdjson::dom::parser();
  w.cols = Columns();
}

void reserve_padded(Worker& w, size_t len) {
  if (w.buf.size() < len + simdjson::SIMDJSON_PADDING) w.buf.resize(len + simdjson::SIMDJSON_PADDING + (len >> 4));
}

// --- to Python ---------------------------------------------------------------------------

template <class T>
PyObject* bytes_of(const std::vector<T>& v) {
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(v.data()), Py_ssize_t(v.size() * sizeof(T)));
}

PyObject* mask_of(const std::vector<uint8_t>& ok) {  // None when every value is present
  for (uint8_t b : ok)
    if (!b) return bytes_of(ok);
  Py_RETURN_NONE;
}

PyObject* str_list(const std::vector<std::string_view>& v, size_t from = 0) {
  PyObject* list = PyList_New(Py_ssize_t(v.size() - from));
  if (list == nullptr) return nullptr;
  for (size_t i = from; i < v.size(); i++) {
    PyObject* s = PyUnicode_DecodeUTF8(v[i].data(), Py_ssize_t(v[i].size()), "strict");
    if (s == nullptr) { Py_DECREF(list); return nullptr; }
    PyList_SET_ITEM(list, Py_ssize_t(i - from), s);
  }
  return list;
}

PyObject* str_list(const std::vector<std::string>& v) {
  std::vector<std::string_view> views(v.begin(), v.end());
  return str_list(views, 1);  // code 0 (absent) is not a text
}

PyObject* result(const Columns& c) {
  // (rows, kind, name codes, names, pid, pid mask, tid, tid mask, ts, dur, correlation, mask,
  //  external_id, mask, device, mask, stream, mask, dims codes, dims texts, bytes, mask,
  //  grid codes, grid texts, skipped counts)
  return Py_BuildValue(
      "(nNNNNNNNNNNNNNNNNNNNNNNN(LLLL))", Py_ssize_t(c.kind.size()), bytes_of(c.kind), bytes_of(c.name),
      str_list(c.names), bytes_of(c.pid), mask_of(c.pid_ok), bytes_of(c.tid), mask_of(c.tid_ok),
      bytes_of(c.ts), bytes_of(c.dur), bytes_of(c.corr), mask_of(c.corr_ok), bytes_of(c.ext),
      mask_of(c.ext_ok), bytes_of(c.dev), mask_of(c.dev_ok), bytes_of(c.stream), mask_of(c.stream_ok),
      bytes_of(c.dims), str_list(c.dims_texts), bytes_of(c.nbytes), mask_of(c.nbytes_ok), bytes_of(c.grid),
      str_list(c.grid_texts), c.skipped[0], c.skipped[1], c.skipped[2], c.skipped[3]);
}

PyObject* finish(Worker& w, bool ok) {
  if (!ok) Py_RETURN_NONE;
  return result(w.cols);
}

// --- the module's functions ----------------------------------------------------------------

PyObject* py_configure(PyObject*, PyObject* args) {
  PyObject* aliases;
  const char* phases;
  if (!PyArg_ParseTuple(args, "O!s", &PyDict_Type, &aliases, &phases)) return nullptr;
  g_aliases.clear();
  PyObject *k, *v;
  Py_ssize_t pos = 0;
  while (PyDict_Next(aliases, &pos, &k, &v)) {
    const char* key = PyUnicode_AsUTF8(k);
    long code = PyLong_AsLong(v);
    if (key == nullptr || (code == -1 && PyErr_Occurred())) return nullptr;
    g_aliases.emplace(key, int(code));
  }
  std::memset(g_other_phase, 0, sizeof g_other_phase);
  for (const char* p = phases; *p; p++) g_other_phase[(unsigned char)*p] = true;
  g_configured = true;
  g_generation++;
  Py_RETURN_NONE;
}

// decode(array: bytes-like holding "[ ... ]") -> tuple | None
PyObject* py_decode(PyObject*, PyObject* arg) {
  if (!g_configured) { PyErr_SetString(PyExc_RuntimeError, "configure() first"); return nullptr; }
  Py_buffer view;
  if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) return nullptr;
  Worker& w = worker();
  size_t len = size_t(view.len);
  bool ok;
  Py_BEGIN_ALLOW_THREADS
  try {  // (under a memory limit an allocation throws: decline, the Python path names the file)
    reserve_padded(w, len);
    std::memcpy(w.buf.data(), view.buf, len);
    std::memset(w.buf.data() + len, 0, simdjson::SIMDJSON_PADDING);
    ok = decode_buffer(w, len);
  } catch (const std::bad_alloc&) {
    release(w);
    ok = false;
  }
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&view);
  return finish(w, ok);
}

// decode_file(path, offset, length) -> tuple | None: the piece read straight into the
// worker's reused buffer, framed as fast.decode_file_piece frames it ('[' piece ']', the
// trailing blanks and commas blanked).  None also when the file is shorter than asked.
PyObject* py_decode_file(PyObject*, PyObject* args) {
  if (!g_configured) { PyErr_SetString(PyExc_RuntimeError, "configure() first"); return nullptr; }
  PyObject* path_obj;
  long long offset, length;
  if (!PyArg_ParseTuple(args, "O&LL", PyUnicode_FSConverter, &path_obj, &offset, &length)) return nullptr;
  std::string path(PyBytes_AS_STRING(path_obj), size_t(PyBytes_GET_SIZE(path_obj)));
  Py_DECREF(path_obj);
  if (offset < 0 || length < 0) Py_RETURN_NONE;
  Worker& w = worker();
  bool ok = false;
  Py_BEGIN_ALLOW_THREADS
  size_t n = size_t(length);
  try {  // (under a memory limit an allocation throws: decline, the Python path names the file)
  reserve_padded(w, n + 2);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    size_t got = 0;
    while (got < n) {
      ssize_t r = pread(fd, w.buf.data() + 1 + got, n - got, off_t(offset + (long long)got));
      if (r <= 0) break;
      got += size_t(r);
    }
    close(fd);
    if (got == n) {
      uint8_t* b = w.buf.data();
      b[0] = '[';
      size_t end = n;  // index of the piece's last byte
      auto blank = [](uint8_t ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == 0x0b || ch == 0x0c; };
      while (end > 0 && blank(b[end])) end--;
      while (end > 0 && b[end] == ',') b[end--] = ' ';
      b[n + 1] = ']';
      std::memset(b + n + 2, 0, simdjson::SIMDJSON_PADDING);
      ok = decode_buffer(w, n + 2);
    }
  }
  } catch (const std::bad_alloc&) {
    release(w);
    ok = false;
  }
  Py_END_ALLOW_THREADS
  return finish(w, ok);
}

PyObject* py_timings(PyObject*, PyObject*) { return Py_BuildValue("(dd)", g_parse_s, g_walk_s); }

PyMethodDef kMethods[] = {
    {"timings", py_timings, METH_NOARGS, "seconds spent parsing and walking (this process, all threads)"},
    {"configure", py_configure, METH_VARARGS, "configure(aliases: dict[str, int], other_phases: str)"},
    {"decode", py_decode, METH_O, "decode(array) -> columns tuple, or None when the piece is not clean"},
    {"decode_file", py_decode_file, METH_VARARGS, "decode_file(path, offset, length) -> columns tuple or None"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_simd", "simdjson field-picking loop for traceview.load", -1,
                       kMethods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__simd(void) {
  // The columns of each piece go to Python as bytes objects of a few MB: without this glibc
  // maps each one freshly (and unmaps it when freed), so every piece pays page faults again.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  PyObject* m = PyModule_Create(&kModule);
  if (m == nullptr) return nullptr;
  PyModule_AddStringConstant(m, "SIMDJSON_VERSION", TV_STR(SIMDJSON_VERSION));
  // what this build declines beyond the first version (native.py refuses an older build)
  PyModule_AddIntConstant(m, "DECLINES_GRAPH_NODES", 1);
  return m;
}
