// SPDX-License-Identifier: Apache-2.0
#pragma once
// The report's figures. Each figure is drawn once into a display list (`canvas`: rectangles, lines, text) and
// that list is rendered twice: to SVG by to_svg() (plain SVG 1.1 with real <text>, so labels stay searchable
// and the file can be inlined in report.html) and to PNG by to_png() through Cairo (libcairo2-dev), whose toy
// text API finds "DejaVu Sans" through fontconfig (fonts-dejavu-core). Cairo's own SVG surface is not used for
// the SVG because it turns text into glyph outlines.
//
//   reliability_figure   reliability diagram of one task, full and quantized bars per confidence bin
//   conf_shift_figure    mean confidence shift (quantized - full) per full-model confidence bin, +-1 standard
//                        error, the bin with the largest |mean shift| highlighted (paper Figures 1 and 3)
//   js_distance_figure   mean Jensen-Shannon distance per task (paper Figure 2), plus the true-class distance
//                        where results.json has it
//
// Without <cairo/cairo.h> the SVG path still works and to_png() throws (the header compiles either way).
// Layer: report (host only; PNG output links cairo).

#include <qprob/core/error.hpp>
#include <qprob/report/results.hpp>
#include <qprob/report/tables.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>
#include <string>
#include <string_view>
#include <vector>

#if __has_include(<cairo/cairo.h>)
#  include <cairo/cairo.h>
#  define QPROB_REPORT_HAS_CAIRO 1
#else
#  define QPROB_REPORT_HAS_CAIRO 0
#endif

namespace qprob::report {

struct rgb {
  unsigned char r = 0, g = 0, b = 0;
};

inline constexpr rgb color_full{31, 119, 180};      ///< full model (blue)
inline constexpr rgb color_quantized{255, 127, 14}; ///< quantized model (orange)
inline constexpr rgb color_highlight{214, 39, 40};  ///< highlighted bin (red)
inline constexpr rgb color_extra{44, 160, 44};      ///< second series of figure 2 (green)
inline constexpr rgb color_axis{34, 34, 34};
inline constexpr rgb color_grid{221, 221, 221};
inline constexpr rgb color_white{255, 255, 255};

enum class text_anchor { start, middle, end };

/// One drawing element in figure pixel coordinates (origin top left, y down).
struct canvas_item {
  enum class kind { rect, line, text } type = kind::rect;
  double x = 0, y = 0, w = 0, h = 0;  ///< rect: corner and size; line: (x, y) -> (w, h); text: baseline anchor
  bool filled = false;
  rgb fill;
  double stroke_width = 0;            ///< 0: no outline
  rgb stroke;
  bool dashed = false;
  std::string text;                   ///< text content
  double font_size = 12;
  text_anchor anchor = text_anchor::start;
  bool vertical = false;              ///< text rotated 90 degrees counter-clockwise about (x, y)
  bool bold = false;
  std::string css_class;              ///< SVG class attribute (tests count bars by it)
  std::string tooltip;                ///< SVG <title>
};

/// A figure as a display list; draw once, render with to_svg() and to_png().
struct canvas {
  double width = 640;
  double height = 420;
  std::vector<canvas_item> items;

  void rect(double x, double y, double w, double h, rgb fill, std::string css_class = {}, std::string tooltip = {}) {
    canvas_item it;
    it.type = canvas_item::kind::rect;
    it.x = x, it.y = y, it.w = w, it.h = h, it.filled = true, it.fill = fill;
    it.css_class = std::move(css_class);
    it.tooltip = std::move(tooltip);
    items.push_back(std::move(it));
  }
  void frame(double x, double y, double w, double h, rgb stroke, double width_px = 1) {
    canvas_item it;
    it.type = canvas_item::kind::rect;
    it.x = x, it.y = y, it.w = w, it.h = h, it.stroke = stroke, it.stroke_width = width_px;
    items.push_back(std::move(it));
  }
  void line(double x1, double y1, double x2, double y2, rgb stroke, double width_px = 1, bool dashed = false,
            std::string css_class = {}) {
    canvas_item it;
    it.type = canvas_item::kind::line;
    it.x = x1, it.y = y1, it.w = x2, it.h = y2, it.stroke = stroke, it.stroke_width = width_px, it.dashed = dashed;
    it.css_class = std::move(css_class);
    items.push_back(std::move(it));
  }
  void text(double x, double y, std::string s, double size = 12, text_anchor anchor = text_anchor::start,
            bool vertical = false, bool bold = false, std::string css_class = {}) {
    canvas_item it;
    it.type = canvas_item::kind::text;
    it.x = x, it.y = y, it.text = std::move(s), it.font_size = size, it.anchor = anchor, it.vertical = vertical;
    it.bold = bold, it.fill = color_axis, it.filled = true;
    it.css_class = std::move(css_class);
    items.push_back(std::move(it));
  }
};

// ---- SVG ----------------------------------------------------------------------------------------------------

namespace figures_detail {

inline std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", x);
  return buf;
}

inline std::string color(rgb c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", c.r, c.g, c.b);
  return buf;
}

}  // namespace figures_detail

/// The canvas as a standalone SVG 1.1 document (XML declaration first; report.html inlines it without).
[[nodiscard]] inline std::string to_svg(const canvas& c) {
  using figures_detail::color;
  using figures_detail::num;
  std::string out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  out += "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" + num(c.width) + "\" height=\"" +
         num(c.height) + "\" viewBox=\"0 0 " + num(c.width) + " " + num(c.height) +
         "\" font-family=\"DejaVu Sans, Verdana, sans-serif\">\n";
  out += "<rect x=\"0\" y=\"0\" width=\"" + num(c.width) + "\" height=\"" + num(c.height) + "\" fill=\"#ffffff\"/>\n";
  for (const auto& it : c.items) {
    const std::string cls = it.css_class.empty() ? "" : " class=\"" + escape_xml(it.css_class) + "\"";
    const std::string close = it.tooltip.empty() ? "/>\n" : "><title>" + escape_xml(it.tooltip) + "</title></" +
                                                                (it.type == canvas_item::kind::rect ? "rect" : "line") + ">\n";
    switch (it.type) {
      case canvas_item::kind::rect:
        out += "<rect" + cls + " x=\"" + num(it.x) + "\" y=\"" + num(it.y) + "\" width=\"" + num(it.w) + "\" height=\"" +
               num(it.h) + "\" fill=\"" + (it.filled ? color(it.fill) : std::string("none")) + "\"";
        if (it.stroke_width > 0) {
          out += " stroke=\"" + color(it.stroke) + "\" stroke-width=\"" + num(it.stroke_width) + "\"";
        }
        out += close;
        break;
      case canvas_item::kind::line:
        out += "<line" + cls + " x1=\"" + num(it.x) + "\" y1=\"" + num(it.y) + "\" x2=\"" + num(it.w) + "\" y2=\"" +
               num(it.h) + "\" stroke=\"" + color(it.stroke) + "\" stroke-width=\"" + num(it.stroke_width) + "\"" +
               (it.dashed ? " stroke-dasharray=\"6 4\"" : "") + close;
        break;
      case canvas_item::kind::text: {
        const char* anchor = it.anchor == text_anchor::start ? "start" : it.anchor == text_anchor::middle ? "middle" : "end";
        out += "<text" + cls + " x=\"" + num(it.x) + "\" y=\"" + num(it.y) + "\" font-size=\"" + num(it.font_size) +
               "\" text-anchor=\"" + anchor + "\" fill=\"" + color(it.fill) + "\"";
        if (it.bold) {
          out += " font-weight=\"bold\"";
        }
        if (it.vertical) {
          out += " transform=\"rotate(-90 " + num(it.x) + " " + num(it.y) + ")\"";
        }
        out += ">" + escape_xml(it.text) + "</text>\n";
        break;
      }
    }
  }
  out += "</svg>\n";
  return out;
}

// ---- PNG (Cairo) --------------------------------------------------------------------------------------------

/// The canvas as PNG bytes, `scale` device pixels per figure pixel (2: sharp on high-DPI screens).
/// @throws qprob::error when Cairo fails or qprob was compiled without <cairo/cairo.h>.
[[nodiscard]] inline std::string to_png(const canvas& c, int scale = 2) {
#if QPROB_REPORT_HAS_CAIRO
  QPROB_CHECK(scale >= 1, "to_png: scale=", scale, " must be >= 1");
  const int w = static_cast<int>(std::lround(c.width * scale));
  const int h = static_cast<int>(std::lround(c.height * scale));
  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, w, h);
  cairo_t* cr = cairo_create(surface);
  const auto set = [&](rgb col) { cairo_set_source_rgb(cr, col.r / 255.0, col.g / 255.0, col.b / 255.0); };
  cairo_scale(cr, scale, scale);
  set(color_white);
  cairo_paint(cr);
  for (const auto& it : c.items) {
    switch (it.type) {
      case canvas_item::kind::rect:
        cairo_rectangle(cr, it.x, it.y, it.w, it.h);
        if (it.filled) {
          set(it.fill);
          cairo_fill_preserve(cr);
        }
        if (it.stroke_width > 0) {
          set(it.stroke);
          cairo_set_line_width(cr, it.stroke_width);
          cairo_stroke(cr);
        }
        cairo_new_path(cr);
        break;
      case canvas_item::kind::line: {
        const double dash[] = {6.0, 4.0};
        cairo_set_dash(cr, dash, it.dashed ? 2 : 0, 0);
        set(it.stroke);
        cairo_set_line_width(cr, it.stroke_width);
        cairo_move_to(cr, it.x, it.y);
        cairo_line_to(cr, it.w, it.h);
        cairo_stroke(cr);
        cairo_set_dash(cr, dash, 0, 0);
        break;
      }
      case canvas_item::kind::text: {
        cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                               it.bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
        cairo_set_font_size(cr, it.font_size);
        cairo_text_extents_t ext;
        cairo_text_extents(cr, it.text.c_str(), &ext);
        const double shift = it.anchor == text_anchor::start ? 0 : it.anchor == text_anchor::middle ? ext.x_advance / 2 : ext.x_advance;
        cairo_save(cr);
        cairo_translate(cr, it.x, it.y);
        if (it.vertical) {
          cairo_rotate(cr, -std::numbers::pi / 2);
        }
        set(it.fill);
        cairo_move_to(cr, -shift, 0);
        cairo_show_text(cr, it.text.c_str());
        cairo_restore(cr);
        break;
      }
    }
  }
  std::string bytes;
  const auto status_draw = cairo_status(cr);
  const auto status_png = cairo_surface_write_to_png_stream(
      surface,
      [](void* closure, const unsigned char* data, unsigned int length) -> cairo_status_t {
        static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
        return CAIRO_STATUS_SUCCESS;
      },
      &bytes);
  cairo_destroy(cr);
  cairo_surface_destroy(surface);
  if (status_draw != CAIRO_STATUS_SUCCESS || status_png != CAIRO_STATUS_SUCCESS) {
    throw error(std::string("to_png: cairo failed: ") +
                cairo_status_to_string(status_draw != CAIRO_STATUS_SUCCESS ? status_draw : status_png));
  }
  return bytes;
#else
  (void)c;
  (void)scale;
  throw error("to_png: qprob was compiled without Cairo (<cairo/cairo.h>); install libcairo2-dev and rebuild");
#endif
}

// ---- plotting helpers ---------------------------------------------------------------------------------------

namespace figures_detail {

/// A plot area [left, right] x [top, bottom] in pixels showing [x0, x1] x [y0, y1] in data units.
struct axes {
  double left = 72, right = 620, top = 62, bottom = 360;
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  [[nodiscard]] double px(double x) const { return left + (x - x0) / (x1 - x0) * (right - left); }
  [[nodiscard]] double py(double y) const { return bottom - (y - y0) / (y1 - y0) * (bottom - top); }
};

/// "Nice" tick positions (steps 1, 2, 5 x 10^k) covering [lo, hi] with about `target` intervals.
inline std::vector<double> ticks(double lo, double hi, int target, int& decimals) {
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  const double step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
  decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  std::vector<double> out;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    out.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  return out;
}

inline std::string fixed(double v, int decimals) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

/// Grid, frame, tick labels and axis labels.
inline void draw_axes(canvas& c, const axes& a, const std::string& xlabel, const std::string& ylabel, bool xticks = true) {
  int dy = 0;
  for (const double v : ticks(a.y0, a.y1, 5, dy)) {
    c.line(a.left, a.py(v), a.right, a.py(v), color_grid);
    c.text(a.left - 6, a.py(v) + 4, fixed(v, dy), 11, text_anchor::end);
  }
  if (xticks) {
    int dx = 0;
    for (const double v : ticks(a.x0, a.x1, 5, dx)) {
      c.line(a.px(v), a.bottom, a.px(v), a.bottom + 5, color_axis);
      c.text(a.px(v), a.bottom + 18, fixed(v, dx), 11, text_anchor::middle);
    }
  }
  c.frame(a.left, a.top, a.right - a.left, a.bottom - a.top, color_axis);
  c.text((a.left + a.right) / 2, a.bottom + 40, xlabel, 13, text_anchor::middle, false, false, "axis-label");
  c.text(20, (a.top + a.bottom) / 2, ylabel, 13, text_anchor::middle, true, false, "axis-label");
}

inline void draw_title(canvas& c, const std::string& title) {
  c.text(c.width / 2, 22, title, 15, text_anchor::middle, false, true, "title");
}

/// Legend entries left to right above the plot area.
inline void draw_legend(canvas& c, const axes& a, const std::vector<std::pair<rgb, std::string>>& entries) {
  double x = a.left;
  for (const auto& [col, label] : entries) {
    c.rect(x, 36, 12, 12, col, "legend");
    c.text(x + 17, 46, label, 12);
    x += 17 + 7.2 * static_cast<double>(label.size()) + 22;
  }
}

inline std::string bin_text(double lower, double upper) {
  return "(" + format_stat(lower) + ", " + format_stat(upper) + "]";
}

}  // namespace figures_detail

// ---- figures --------------------------------------------------------------------------------------------------

/// Reliability diagram of one task: per bin with samples, the accuracy of the full (left half of the bin) and
/// the quantized model (right half), over the diagonal of perfect calibration. Bars: class "bar-full" and
/// "bar-quantized", one per non-empty bin.
[[nodiscard]] inline canvas reliability_figure(const results& r, const task_result& task) {
  using namespace figures_detail;
  canvas c;
  axes a;
  draw_title(c, task.name + ": reliability diagram (" + (task.binary() ? std::string("ECE ") + format_percent(task.full.ece) +
                                                                              " -> " + format_percent(task.quantized.ece)
                                                                        : std::string("ACE ") + format_percent(task.full.ace) +
                                                                              " -> " + format_percent(task.quantized.ace)) +
                    ", x100)");
  draw_axes(c, a, "Confidence", "Accuracy");
  draw_legend(c, a, {{color_full, r.full_label}, {color_quantized, r.quantized_label}});
  const auto bars = [&](const std::vector<reliability_bin>& bins, bool right_half, rgb col, const char* cls) {
    for (const auto& b : bins) {
      if (b.count <= 0 || std::isnan(b.acc)) {
        continue;
      }
      // An overflow bin [1, 1] (torchmetrics edges) has no width: draw it one hundredth wide.
      const double lo = b.upper > b.lower ? b.lower : b.lower - 0.01;
      const double mid = (lo + b.upper) / 2;
      const double x0 = a.px(right_half ? mid : lo) + 0.5;
      const double x1 = a.px(right_half ? b.upper : mid) - 0.5;
      const double acc = std::clamp(b.acc, 0.0, 1.0);
      c.rect(x0, a.py(acc), std::max(x1 - x0, 1.0), a.py(0) - a.py(acc), col, cls,
             std::string(cls) + " " + bin_text(b.lower, b.upper) + ": n=" + std::to_string(b.count) +
                 ", conf=" + format_stat(b.conf) + ", acc=" + format_stat(b.acc));
    }
  };
  bars(task.full.reliability, false, color_full, "bar-full");
  bars(task.quantized.reliability, true, color_quantized, "bar-quantized");
  c.line(a.px(0), a.py(0), a.px(1), a.py(1), color_axis, 1.2, true, "diagonal");
  c.text(a.px(0.03), a.py(0.93), "perfect calibration (dashed)", 11);
  return c;
}

/// Paper Figures 1 and 3 for one task: per bin of the full model's confidence, the mean confidence shift
/// (quantized - full) with +-1 standard error; the bin with the largest |mean shift| is highlighted. Bars:
/// class "bar-shift" (the highlighted one "bar-shift highlight"), one per non-empty bin.
[[nodiscard]] inline canvas conf_shift_figure(const results& r, const task_result& task) {
  using namespace figures_detail;
  (void)r;
  canvas c;
  axes a;
  const auto& bins = task.paired.conf_shift_by_bin;
  draw_title(c, task.name + ": confidence shift after quantization by full-model confidence");
  double lo = 1, hi = 0, ylo = 0, yhi = 0;
  std::size_t top = bins.size();
  for (std::size_t i = 0; i < bins.size(); ++i) {
    const auto& b = bins[i];
    lo = std::min(lo, b.lower);
    hi = std::max(hi, b.upper);
    if (b.count <= 0 || std::isnan(b.mean_conf_shift)) {
      continue;
    }
    const double se = std::isnan(b.se_conf_shift) ? 0 : b.se_conf_shift;
    ylo = std::min(ylo, b.mean_conf_shift - se);
    yhi = std::max(yhi, b.mean_conf_shift + se);
    if (top == bins.size() || std::abs(b.mean_conf_shift) > std::abs(bins[top].mean_conf_shift)) {
      top = i;
    }
  }
  if (!(hi > lo)) {
    lo = 0, hi = 1;
  }
  const double pad = std::max((yhi - ylo) * 0.1, 1e-4);
  a.x0 = lo, a.x1 = hi, a.y0 = ylo - pad, a.y1 = yhi + pad;
  draw_axes(c, a, "Full-model confidence", "Mean confidence shift (quantized - full)");
  c.line(a.left, a.py(0), a.right, a.py(0), color_axis, 1, false, "zero");
  draw_legend(c, a, {{color_full, "mean shift +- 1 s.e."}, {color_highlight, "largest |mean shift|"}});
  for (std::size_t i = 0; i < bins.size(); ++i) {
    const auto& b = bins[i];
    if (b.count <= 0 || std::isnan(b.mean_conf_shift)) {
      continue;
    }
    const double x0 = a.px(b.lower) + 2, x1 = a.px(b.upper) - 2;
    const double y = a.py(b.mean_conf_shift), y0 = a.py(0);
    const bool hl = i == top;
    c.rect(x0, std::min(y, y0), std::max(x1 - x0, 1.0), std::abs(y0 - y), hl ? color_highlight : color_full,
           hl ? "bar-shift highlight" : "bar-shift",
           "bin " + bin_text(b.lower, b.upper) + ": n=" + std::to_string(b.count) + ", mean conf shift=" +
               format_stat(b.mean_conf_shift) + ", se=" + format_stat(b.se_conf_shift) +
               ", mean true-class shift=" + format_stat(b.mean_true_shift));
    if (!std::isnan(b.se_conf_shift) && b.se_conf_shift > 0) {
      const double xm = (x0 + x1) / 2;
      const double ya = a.py(b.mean_conf_shift - b.se_conf_shift), yb = a.py(b.mean_conf_shift + b.se_conf_shift);
      c.line(xm, ya, xm, yb, color_axis, 1.2, false, "error-bar");
      c.line(xm - 4, ya, xm + 4, ya, color_axis, 1.2);
      c.line(xm - 4, yb, xm + 4, yb, color_axis, 1.2);
    }
  }
  if (top == bins.size()) {
    c.text((a.left + a.right) / 2, (a.top + a.bottom) / 2, "no samples", 14, text_anchor::middle);
  }
  return c;
}

/// Paper Figure 2: mean Jensen-Shannon distance between the full and quantized choice distributions per task
/// (class "bar-js"), and the true-class distance (class "bar-js-true") where results.json has it.
[[nodiscard]] inline canvas js_distance_figure(const results& r) {
  using namespace figures_detail;
  canvas c;
  const auto n = r.tasks.size();
  c.width = std::max(640.0, 100.0 * static_cast<double>(n) + 120);
  axes a;
  a.right = c.width - 20;
  bool any_true = false;
  double ymax = 0;
  for (const auto& t : r.tasks) {
    any_true = any_true || !std::isnan(t.paired.true_class_js_distance);
    for (const double v : {t.paired.js_distance, t.paired.true_class_js_distance}) {
      if (!std::isnan(v)) {
        ymax = std::max(ymax, v);
      }
    }
  }
  a.x0 = 0, a.x1 = static_cast<double>(n), a.y0 = 0, a.y1 = ymax > 0 ? ymax * 1.2 : 0.01;
  draw_title(c, "Mean Jensen-Shannon distance between full and quantized model");
  draw_axes(c, a, "Task", "Jensen-Shannon distance", false);
  std::vector<std::pair<rgb, std::string>> legend{{color_full, "mean JS distance of the choice distributions"}};
  if (any_true) {
    legend.push_back({color_extra, "true-class JS distance"});
  }
  draw_legend(c, a, legend);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& t = r.tasks[i];
    const double slot0 = a.px(static_cast<double>(i)), slot1 = a.px(static_cast<double>(i + 1));
    const double pad = (slot1 - slot0) * 0.18;
    const int series = any_true ? 2 : 1;
    const double bw = (slot1 - slot0 - 2 * pad) / series;
    const std::pair<double, rgb> values[] = {{t.paired.js_distance, color_full},
                                             {t.paired.true_class_js_distance, color_extra}};
    for (int s = 0; s < series; ++s) {
      const double v = values[s].first;
      const double x = slot0 + pad + s * bw;
      if (std::isnan(v)) {
        c.text(x + bw / 2, a.py(0) - 4, "n/a", 10, text_anchor::middle);
        continue;
      }
      const char* cls = s == 0 ? "bar-js" : "bar-js-true";
      c.rect(x, a.py(v), bw, a.py(0) - a.py(v), values[s].second, cls, t.name + ": " + format_stat(v));
      c.text(x + bw / 2, a.py(v) - 4, format_stat(v), 10, text_anchor::middle, false, false, "value");
    }
    c.text((slot0 + slot1) / 2, a.bottom + 18, t.name, 11, text_anchor::middle, false, false, "task-label");
  }
  return c;
}

}  // namespace qprob::report
