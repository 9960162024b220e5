// SPDX-License-Identifier: Apache-2.0
// report.html in a real browser: renders the fixture report, screenshots it with headless Chromium (Debian
// package `chromium`) at 1200x2000 and checks, decoding the screenshot with Cairo, that it is a PNG of that size
// whose table region shows the table styling and text and whose figure region shows the bar colours of the
// figures. Exit 0: passed; 1: failed; 77: skipped (no chromium; ctest reports it as skipped).
// Usage: test_report_chromium OUT_DIR   (QPROB_CHROMIUM overrides the browser binary)
#include <qprob/report/report.hpp>

#include "report_fixture.hpp"

#include <cairo/cairo.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
  failures += ok ? 0 : 1;
}

fs::path find_chromium() {
  if (const char* env = std::getenv("QPROB_CHROMIUM"); env && *env) {
    return env;
  }
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    for (const char* name : {"chromium", "chromium-browser"}) {
      const auto p = fs::path(dir) / name;
      if (fs::exists(p)) {
        return p;
      }
    }
  }
  return {};
}

struct region_stats {
  long pixels = 0;
  long non_white = 0;
  long near_full = 0;       ///< pixels close to the full-model bar colour
  long near_quantized = 0;  ///< pixels close to the quantized-model bar colour
  long near_header = 0;     ///< pixels of the table header background (#e8eef6)
  std::size_t colours = 0;
};

bool near(int r, int g, int b, qprob::report::rgb c, int tol) {
  return std::abs(r - c.r) <= tol && std::abs(g - c.g) <= tol && std::abs(b - c.b) <= tol;
}

region_stats stats(cairo_surface_t* s, int y0, int y1) {
  region_stats out;
  const int w = cairo_image_surface_get_width(s);
  const int stride = cairo_image_surface_get_stride(s);
  const unsigned char* data = cairo_image_surface_get_data(s);
  std::set<std::uint32_t> colours;
  for (int y = y0; y < y1; ++y) {
    const auto* row = reinterpret_cast<const std::uint32_t*>(data + static_cast<std::ptrdiff_t>(y) * stride);
    for (int x = 0; x < w; ++x) {
      const std::uint32_t px = row[x];  // native-endian ARGB32
      const int r = (px >> 16) & 0xff, g = (px >> 8) & 0xff, b = px & 0xff;
      ++out.pixels;
      out.non_white += (r < 245 || g < 245 || b < 245) ? 1 : 0;
      out.near_full += near(r, g, b, qprob::report::color_full, 12) ? 1 : 0;
      out.near_quantized += near(r, g, b, qprob::report::color_quantized, 12) ? 1 : 0;
      out.near_header += near(r, g, b, {0xe8, 0xee, 0xf6}, 3) ? 1 : 0;
      colours.insert(px & 0xffffffu);
    }
  }
  out.colours = colours.size();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: test_report_chromium OUT_DIR\n");
    return 2;
  }
  const fs::path dir = fs::absolute(argv[1]);
  const auto chromium = find_chromium();
  if (chromium.empty()) {
    std::printf("SKIPPED: no chromium on PATH (Debian: apt-get install chromium; or set QPROB_CHROMIUM)\n");
    return 77;
  }
  try {
    fs::remove_all(dir);
    qprob::test::write_results(dir, qprob::test::report_fixture());
    qprob::report::write_report(dir);
  } catch (const std::exception& e) {
    std::printf("FAIL: write_report: %s\n", e.what());
    return 1;
  }
  const auto shot = dir / "screenshot.png";
  const std::string command = "\"" + chromium.string() + "\" --headless --no-sandbox --disable-gpu --hide-scrollbars" +
                              " --user-data-dir=\"" + (dir / "chromium-profile").string() + "\"" +
                              " --screenshot=\"" + shot.string() + "\" --window-size=1200,2000 \"file://" +
                              (dir / "report.html").string() + "\" > \"" + (dir / "chromium.log").string() + "\" 2>&1";
  std::printf("running: %s\n", command.c_str());
  const int status = std::system(command.c_str());
  check(status == 0, "chromium exited with status 0 (log: " + (dir / "chromium.log").string() + ")");
  if (!fs::exists(shot)) {
    std::printf("FAIL: no screenshot at %s\n", shot.c_str());
    return 1;
  }
  cairo_surface_t* s = cairo_image_surface_create_from_png(shot.c_str());
  if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) {
    std::printf("FAIL: %s is not a PNG Cairo can read: %s\n", shot.c_str(), cairo_status_to_string(cairo_surface_status(s)));
    cairo_surface_destroy(s);
    return 1;
  }
  const int w = cairo_image_surface_get_width(s), h = cairo_image_surface_get_height(s);
  check(w == 1200 && h == 2000, "screenshot is 1200x2000 (got " + std::to_string(w) + "x" + std::to_string(h) + ")");
  if (w == 1200 && h == 2000) {
    cairo_surface_flush(s);
    // The tables come first (the heading, then table 1, the confidence and the paired tables), the figures after.
    const auto tables = stats(s, 0, 700);
    const auto figures = stats(s, 700, 2000);
    std::printf("tables  y 0..700:     non-white %ld of %ld, %zu colours, header-background %ld\n", tables.non_white,
                tables.pixels, tables.colours, tables.near_header);
    std::printf("figures y 700..2000:  non-white %ld of %ld, %zu colours, full-bar %ld, quantized-bar %ld\n",
                figures.non_white, figures.pixels, figures.colours, figures.near_full, figures.near_quantized);
    check(tables.non_white > tables.pixels / 50, "table region is not blank (> 2% non-white pixels)");
    check(tables.near_header > 2000, "table header styling rendered (> 2000 pixels of #e8eef6)");
    check(tables.colours > 20, "table region has anti-aliased text (> 20 distinct colours)");
    check(figures.non_white > figures.pixels / 50, "figure region is not blank (> 2% non-white pixels)");
    check(figures.near_full > 2000, "full-model bars rendered (> 2000 pixels of the blue)");
    check(figures.near_quantized > 1000, "quantized-model bars rendered (> 1000 pixels of the orange)");
  }
  cairo_surface_destroy(s);
  std::printf("Result: %s (screenshot: %s)\n", failures == 0 ? "PASSED" : "FAILED", shot.c_str());
  return failures == 0 ? 0 : 1;
}
