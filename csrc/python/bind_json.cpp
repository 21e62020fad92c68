// A JSON decoder for request bodies that turns arrays of numbers into numpy arrays as it reads
// them. An inline inference body is mostly numbers: decoding it into Python floats and then
// converting those to an array costs several times the parse itself (benchmarks/RESULTS.md,
// "HTTP serving"). Strict RFC 8259: anything else is refused with ValueError (the server then
// hands the body to the full route, whose error names the problem).
//
// A rectangular, non-empty array (nested to any depth) whose leaves are all numbers becomes an
// int64 array when every number is an integer that fits, else a float64 array, which is what
// numpy.asarray makes of the same Python lists. Every other value becomes what json.loads
// returns: dict, list, str, int, float, True, False, None.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cerrno>
#include <cfloat>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace py = pybind11;

namespace phi::py_bind {

namespace {

constexpr int kMaxDepth = 256;

struct Decoder {
  const char* begin;
  const char* p;
  const char* end;

  [[noreturn]] void fail(const char* what) const {
    throw py::value_error(std::string("invalid JSON at byte ") + std::to_string(p - begin) + ": " + what);
  }

  // The first character at or after q that is not JSON whitespace.
  const char* skip_ws(const char* q) const {
    while (q < end && (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t')) ++q;
    return q;
  }

  void ws() { p = skip_ws(p); }

  // ---- numbers -------------------------------------------------------------------------------

  // A number token, read in one pass: its decimal mantissa (the first 19 significant digits)
  // and power of ten. Eight digits at a time where eight are there (SWAR: one 64-bit load, a
  // check that all eight bytes are digits, three multiplications), one at a time otherwise.
  struct Token {
    const char* start;
    const char* stop;
    bool is_int = true;   // no fraction or exponent
    bool neg = false;
    bool exact = true;    // every significant digit is in w
    uint64_t w = 0;
    int sig = 0;          // significant digits in w
    int exp10 = 0;
  };

  static uint64_t load8(const char* s) {
    uint64_t v;
    std::memcpy(&v, s, sizeof v);
    return v;  // little-endian: the first character in the low byte
  }

  static bool eight_digits(uint64_t v) {
    return ((((v + 0x4646464646464646ULL) | (v - 0x3030303030303030ULL)) & 0x8080808080808080ULL)) == 0;
  }

  static uint32_t parse_eight(uint64_t v) {
    v -= 0x3030303030303030ULL;
    v = (v * 10) + (v >> 8);
    v = (((v & 0x000000FF000000FFULL) * 0x000F424000000064ULL) +
         (((v >> 16) & 0x000000FF000000FFULL) * 0x0000271000000001ULL)) >>
        32;
    return static_cast<uint32_t>(v);
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }

  // Digits at p into t; a fraction's lower the power of ten, an integer part's dropped digits
  // raise it.
  void read_digits(Token& t, bool fraction) {
    if (fraction) {
      while (t.w == 0 && p < end && *p == '0') {  // leading zeros are not significant
        ++p;
        --t.exp10;
      }
    }
    while (t.sig + 8 <= 19 && end - p >= 8) {
      const uint64_t v = load8(p);
      if (!eight_digits(v)) break;
      t.w = t.w * 100000000ULL + parse_eight(v);
      t.sig += t.w != 0 ? 8 : 0;
      if (fraction) t.exp10 -= 8;
      p += 8;
    }
    for (; p < end && digit(*p); ++p) {
      if (t.sig < 19) {
        t.w = t.w * 10 + static_cast<uint64_t>(*p - '0');
        t.sig += t.w != 0;
        if (fraction) --t.exp10;
      } else {
        t.exact = false;
        if (!fraction) ++t.exp10;
      }
    }
  }

  // The number token at p (the JSON grammar checked); p moves past it.
  Token number_token() {
    Token t;
    t.start = p;
    if (p < end && *p == '-') {
      t.neg = true;
      ++p;
    }
    if (p >= end) fail("a number ends early");
    if (*p == '0') {
      ++p;
    } else if (*p >= '1' && *p <= '9') {
      read_digits(t, false);
    } else {
      fail("expected a digit");
    }
    if (p < end && *p == '.') {
      t.is_int = false;
      ++p;
      if (p >= end || !digit(*p)) fail("expected a digit after '.'");
      read_digits(t, true);
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
      t.is_int = false;
      ++p;
      bool eneg = false;
      if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
      if (p >= end || !digit(*p)) fail("expected a digit in the exponent");
      int e = 0;
      for (; p < end && digit(*p); ++p) {
        if (e < 100000) e = e * 10 + (*p - '0');
      }
      t.exp10 += eneg ? -e : e;
    }
    t.stop = p;
    return t;
  }

  // The integer token as int64, if it is one.
  static bool as_int64(const Token& t, int64_t& out) {
    if (!t.is_int || !t.exact) return false;
    constexpr uint64_t kMax = static_cast<uint64_t>(INT64_MAX);
    if (t.neg) {
      if (t.w > kMax + 1) return false;
      out = t.w == kMax + 1 ? INT64_MIN : -static_cast<int64_t>(t.w);
    } else {
      if (t.w > kMax) return false;
      out = static_cast<int64_t>(t.w);
    }
    return true;
  }

  // The token as the nearest double (what Python's float() gives). Clinger's fast path first: a
  // mantissa of at most 2^53 and a power of ten of at most 22 are both exact doubles, so one
  // multiplication or division rounds correctly.
  static double as_double(const Token& t) {
    static constexpr double kPow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                        1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                        1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    if (t.exact && t.w <= (uint64_t{1} << 53) && t.exp10 >= -22 && t.exp10 <= 22) {
      double v = static_cast<double>(t.w);
      v = t.exp10 < 0 ? v / kPow10[-t.exp10] : v * kPow10[t.exp10];
      return t.neg ? -v : v;
    }
#if (defined(__x86_64__) || defined(__i386__)) && LDBL_MANT_DIG == 64
    // The 17-19 digit mantissas of shortest float reprs: x87's 64-bit mantissa holds w and
    // 10^|e| (e <= 27) exactly, so the quotient or product is off by at most half its last bit;
    // rounding it to double is then correct unless it lies next to a halfway point between two
    // doubles (its 11 dropped bits near 0x400), which goes to from_chars.
    if (t.exact && t.exp10 >= -27 && t.exp10 <= 27) {
      static constexpr long double kPow10L[] = {
          1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
          1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
          1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};
      const long double lw = static_cast<long double>(t.w);
      const long double r = t.exp10 < 0 ? lw / kPow10L[-t.exp10] : lw * kPow10L[t.exp10];
      uint64_t mant = 0;
      std::memcpy(&mant, &r, sizeof mant);  // the explicit 64-bit mantissa of the 80-bit format
      const uint64_t dropped = mant & 0x7FF;
      if (dropped < 0x3FF || dropped > 0x401) {
        const double v = static_cast<double>(r);
        return t.neg ? -v : v;
      }
    }
#endif
    double v = 0.0;
    auto r = std::from_chars(t.start, t.stop, v);
    if (r.ec == std::errc::result_out_of_range) {
      // Python's float() gives inf or 0.0 here; strtod does the same.
      std::string s(t.start, t.stop);
      v = std::strtod(s.c_str(), nullptr);
    }
    return v;
  }

  // ---- numeric arrays ------------------------------------------------------------------------

  struct NotNumeric {};

  struct Numeric {
    std::vector<int64_t> shape;  // -1 while a depth's first array is still being read
    std::vector<int64_t> ints;   // the numbers while all are integers that fit int64
    std::vector<double> values;  // the numbers once one is not
    bool all_int = true;
  };

  static bool starts_number(char c) { return c == '-' || (c >= '0' && c <= '9'); }

  static void add_number(Numeric& out, const Token& t) {
    if (t.is_int) {
      // An integer int64 cannot hold makes numpy build an object (or uint64) array: the
      // generic path keeps that outcome.
      int64_t iv = 0;
      if (!as_int64(t, iv)) throw NotNumeric{};
      if (out.all_int) {
        out.ints.push_back(iv);
        return;
      }
    }
    if (out.all_int) {  // the first non-integer: what came before becomes float64 (exactly so)
      out.all_int = false;
      out.values.assign(out.ints.begin(), out.ints.end());
      out.ints.clear();
    }
    out.values.push_back(as_double(t));
  }

  // Reads a rectangular, non-empty array of numbers at p (at '['), or throws NotNumeric; the
  // caller then decodes the array generically from its start.
  void numeric(Numeric& out, size_t depth) {
    if (depth >= static_cast<size_t>(kMaxDepth)) throw NotNumeric{};
    ++p;  // '['
    ws();
    if (p >= end || *p == ']') throw NotNumeric{};  // empty: a list, as json.loads gives
    bool arrays;
    if (out.shape.size() > depth) {  // a sibling fixed this depth's length and what it holds
      arrays = out.shape.size() > depth + 1;
    } else {
      arrays = *p == '[';
      out.shape.push_back(-1);
    }
    int64_t count = 0;
    for (;;) {
      if (p >= end) throw NotNumeric{};
      if (arrays) {
        if (*p != '[') throw NotNumeric{};
        numeric(out, depth + 1);
      } else {
        if (!starts_number(*p)) throw NotNumeric{};
        add_number(out, number_token());
      }
      ++count;
      ws();
      if (p >= end) throw NotNumeric{};
      if (*p == ',') {
        ++p;
        ws();
        continue;
      }
      if (*p != ']') throw NotNumeric{};
      ++p;
      break;
    }
    if (out.shape[depth] == -1) {
      out.shape[depth] = count;
    } else if (out.shape[depth] != count) {
      throw NotNumeric{};  // ragged
    }
  }

  // ---- generic values ------------------------------------------------------------------------

  py::object value(int depth) {
    if (depth > kMaxDepth) fail("nested too deeply");
    ws();
    if (p >= end) fail("a value is missing");
    switch (*p) {
      case '{':
        return object(depth);
      case '[':
        return array(depth);
      case '"':
        return string();
      case 't':
        literal("true");
        return py::bool_(true);
      case 'f':
        literal("false");
        return py::bool_(false);
      case 'n':
        literal("null");
        return py::none();
      default:
        return number();
    }
  }

  void literal(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end - p) < n || std::memcmp(p, word, n) != 0) fail("unexpected character");
    p += n;
  }

  py::object number() {
    const Token t = number_token();
    if (!t.is_int) return py::float_(as_double(t));
    int64_t iv = 0;
    if (as_int64(t, iv)) return py::reinterpret_steal<py::object>(PyLong_FromLongLong(iv));
    std::string s(t.start, t.stop);
    PyObject* big = PyLong_FromString(s.c_str(), nullptr, 10);
    if (big == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(big);
  }

  py::object array(int depth) {
    const char* start = p;
    Numeric num;
    // An array whose first element is plainly not a number or an array (an object, a string,
    // a literal: V2's list of input tensors) goes to the generic path without the numeric
    // attempt, whose exception costs more than decoding a small object (about 0.9 us a time).
    const char* first = skip_ws(p + 1);
    bool ok = first < end && (starts_number(*first) || *first == '[');
    if (ok) {
      try {
        numeric(num, 0);
      } catch (const NotNumeric&) {
        ok = false;
      }
    }
    if (ok) {
      if (num.all_int) {
        py::array_t<int64_t> a(num.shape);
        std::memcpy(a.mutable_data(), num.ints.data(), num.ints.size() * sizeof(int64_t));
        return std::move(a);
      }
      py::array_t<double> a(num.shape);
      std::memcpy(a.mutable_data(), num.values.data(), num.values.size() * sizeof(double));
      return std::move(a);
    }
    p = start + 1;
    py::list out;
    ws();
    if (p < end && *p == ']') {
      ++p;
      return std::move(out);
    }
    for (;;) {
      out.append(value(depth + 1));
      ws();
      if (p >= end) fail("an array ends early");
      if (*p == ',') {
        ++p;
        continue;
      }
      if (*p == ']') {
        ++p;
        return std::move(out);
      }
      fail("expected ',' or ']'");
    }
  }

  py::object object(int depth) {
    ++p;  // '{'
    py::dict out;
    ws();
    if (p < end && *p == '}') {
      ++p;
      return std::move(out);
    }
    for (;;) {
      ws();
      if (p >= end || *p != '"') fail("expected a key");
      py::object key = string();
      ws();
      if (p >= end || *p != ':') fail("expected ':'");
      ++p;
      py::object v = value(depth + 1);
      if (PyDict_SetItem(out.ptr(), key.ptr(), v.ptr()) != 0) throw py::error_already_set();
      ws();
      if (p >= end) fail("an object ends early");
      if (*p == ',') {
        ++p;
        continue;
      }
      if (*p == '}') {
        ++p;
        return std::move(out);
      }
      fail("expected ',' or '}'");
    }
  }

  unsigned hex4() {
    if (end - p < 4) fail("a \\u escape ends early");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = *p++;
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<unsigned>(c - 'A' + 10);
      } else {
        fail("a \\u escape needs four hex digits");
      }
    }
    return v;
  }

  static void utf8(std::string& s, unsigned cp) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  py::object string() {
    ++p;  // '"'
    const char* start = p;
    while (p < end && *p != '"' && *p != '\\' && static_cast<unsigned char>(*p) >= 0x20) ++p;
    if (p >= end) fail("a string ends early");
    if (*p == '"') {
      PyObject* s = PyUnicode_DecodeUTF8(start, p - start, "strict");
      if (s == nullptr) throw py::error_already_set();
      ++p;
      return py::reinterpret_steal<py::object>(s);
    }
    std::string buf(start, p);
    for (;;) {
      if (p >= end) fail("a string ends early");
      const char c = *p;
      if (c == '"') {
        ++p;
        break;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("a control character in a string");
      if (c != '\\') {
        buf += c;
        ++p;
        continue;
      }
      ++p;
      if (p >= end) fail("a string ends early");
      const char e = *p++;
      switch (e) {
        case '"':
          buf += '"';
          break;
        case '\\':
          buf += '\\';
          break;
        case '/':
          buf += '/';
          break;
        case 'b':
          buf += '\b';
          break;
        case 'f':
          buf += '\f';
          break;
        case 'n':
          buf += '\n';
          break;
        case 'r':
          buf += '\r';
          break;
        case 't':
          buf += '\t';
          break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u') fail("a lone surrogate");
            p += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("a lone surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("a lone surrogate");
          }
          utf8(buf, cp);
          break;
        }
        default:
          fail("an unknown escape");
      }
    }
    PyObject* s = PyUnicode_DecodeUTF8(buf.data(), static_cast<Py_ssize_t>(buf.size()), "strict");
    if (s == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(s);
  }
};

py::object loads(const py::bytes& data) {
  char* buf = nullptr;
  Py_ssize_t n = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &buf, &n) != 0) throw py::error_already_set();
  Decoder d{buf, buf, buf + n};
  py::object out = d.value(0);
  d.ws();
  if (d.p != d.end) d.fail("extra data after the value");
  return out;
}

// Whether a C-contiguous float32 or float64 array holds no NaN or infinity: an exponent field
// of all ones, tested on the bits (a branch-free loop the compiler vectorises). Request checks
// call this on every inline input; numpy's isfinite(a).all() costs two ufunc dispatches and a
// temporary (several microseconds on a 256-element request).
template <typename Bits>
bool exponents_finite(const void* data, py::ssize_t n, Bits mask) {
  const Bits* x = static_cast<const Bits*>(data);
  Bits bad = 0;
  for (py::ssize_t i = 0; i < n; ++i) bad |= static_cast<Bits>((x[i] & mask) == mask);
  return bad == 0;
}

bool all_finite(const py::array& a) {
  if ((a.flags() & py::array::c_style) == 0) throw py::type_error("all_finite: the array is not C-contiguous");
  const auto kind = a.dtype().kind();
  const auto size = a.dtype().itemsize();
  const py::ssize_t n = a.size();
  if (kind != 'f' || (size != 4 && size != 8)) throw py::type_error("all_finite: the array is not float32 or float64");
  const auto check = [&] {
    return size == 4 ? exponents_finite<uint32_t>(a.data(), n, 0x7f800000u)
                     : exponents_finite<uint64_t>(a.data(), n, 0x7ff0000000000000ull);
  };
  if (n < (py::ssize_t{1} << 16)) return check();
  py::gil_scoped_release unlocked;  // large arrays are read without the GIL, as numpy's loops run
  return check();
}

// The common inline input checked, and converted, in one call (the request path's
// parse_inputs): a C-contiguous float32 or float64 array in native byte order, for an input of
// `width` bytes per float (4 or 8), whose shape fits `dims` (-1: any size; None: any shape), with
// 1..max_rows rows unless 0-d, at most max_bytes after conversion, and finite unless allowed.
// Returns the array itself when the widths agree, a converted copy when they differ (float64 to
// float32 rounds to nearest, as numpy's astype), or None when anything does not hold: the caller's
// general checks then say what is wrong, in the same words as before.
py::object float_input(const py::array& a, int width, const py::object& dims, py::ssize_t max_rows,
                       py::ssize_t max_bytes, bool allow_non_finite) {
  const py::dtype dt = a.dtype();
  const auto from = dt.itemsize();
  if (dt.kind() != 'f' || (from != 4 && from != 8) || dt.byteorder() == '>' || (width != 4 && width != 8) ||
      (a.flags() & py::array::c_style) == 0)
    return py::none();
  const py::ssize_t nd = a.ndim();
  if (!dims.is_none()) {
    if (!py::isinstance<py::tuple>(dims)) return py::none();
    const auto want = py::reinterpret_borrow<py::tuple>(dims);
    if (static_cast<py::ssize_t>(want.size()) != nd) return py::none();
    if (nd > 0 && (a.shape(0) == 0 || a.shape(0) > max_rows)) return py::none();
    for (py::ssize_t i = 0; i < nd; ++i) {
      PyObject* item = want[i].ptr();
      if (!PyLong_Check(item)) return py::none();
      const Py_ssize_t d = PyLong_AsSsize_t(item);
      if (d == -1 && PyErr_Occurred()) {
        PyErr_Clear();  // too large for a size: no array has that dimension
        return py::none();
      }
      if (d >= 0 && d != a.shape(i)) return py::none();
    }
  }
  const py::ssize_t n = a.size();
  if (n > max_bytes / width) return py::none();
  // Large inputs are checked and converted without the GIL, as numpy's own loops run.
  const bool release = n >= (py::ssize_t{1} << 16);
  const auto finite = [&](const void* p) {
    return width == 4 ? exponents_finite<uint32_t>(p, n, 0x7f800000u)
                      : exponents_finite<uint64_t>(p, n, 0x7ff0000000000000ull);
  };
  if (from == width) {
    if (allow_non_finite) return a;
    bool ok;
    if (release) {
      py::gil_scoped_release unlocked;
      ok = finite(a.data());
    } else {
      ok = finite(a.data());
    }
    return ok ? py::object(a) : py::none();
  }
  std::vector<py::ssize_t> shape(a.shape(), a.shape() + nd);
  py::array out = width == 4 ? py::array(py::array_t<float>(shape)) : py::array(py::array_t<double>(shape));
  const void* src = a.data();
  void* dst = out.mutable_data();
  const auto convert = [&] {
    if (width == 4) {
      const double* s = static_cast<const double*>(src);
      float* o = static_cast<float*>(dst);
      for (py::ssize_t i = 0; i < n; ++i) o[i] = static_cast<float>(s[i]);
    } else {
      const float* s = static_cast<const float*>(src);
      double* o = static_cast<double*>(dst);
      for (py::ssize_t i = 0; i < n; ++i) o[i] = static_cast<double>(s[i]);
    }
    return allow_non_finite || finite(dst);
  };
  bool ok;
  if (release) {
    py::gil_scoped_release unlocked;
    ok = convert();
  } else {
    ok = convert();
  }
  return ok ? py::object(out) : py::none();
}

}  // namespace

void init_json(py::module_& m) {
  m.def("float_input", &float_input, py::arg("array"), py::arg("width"), py::arg("dims"), py::arg("max_rows"),
        py::arg("max_bytes"), py::arg("allow_non_finite"),
        "The common inline input checked and converted in one call: the array (converted to `width` bytes "
        "per float when it differs) if it is a C-contiguous float32/float64 array that fits `dims` (-1: any; "
        "None: any shape), 1..max_rows rows, max_bytes and finiteness; else None.");
  m.def("all_finite", &all_finite, py::arg("array"),
        "Whether a C-contiguous float32 or float64 array holds no NaN or infinity (TypeError for "
        "any other array).");
  m.def("json_loads", &loads, py::arg("data"),
        "Decode a JSON document (bytes), with rectangular arrays of numbers as numpy arrays (int64 when "
        "every number is an integer that fits, else float64). ValueError on anything that is not JSON.");
}

}  // namespace phi::py_bind
