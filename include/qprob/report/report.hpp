// SPDX-License-Identifier: Apache-2.0
#pragma once
// write_report(out_dir): renders the report of a `qprob compare` run from <out_dir>/results.json:
//
//   tables/table1.{md,csv}            accuracy and calibration error (paper Table 1)
//   tables/table_confidence.{md,csv}  Conf, Conf_err, Conf_true, H (paper Tables 2, 4, 5)
//   tables/table_paired.{md,csv}      divergences and test statistics behind the marks
//   figures/reliability_<task>.{svg,png}, figures/conf_shift_<task>.{svg,png}, figures/js_distance.{svg,png}
//   tables/table_next_token.{md,csv}  next-token (Price-of-Efficiency) tasks, with reliability_<task> figures
//   report.html                       all tables and figures (SVG inlined, CSS inline, no script, no network)
// The multiple-choice files are written when results.json has a multiple-choice task, the next-token ones when
// it has a next-token task (these have no choice distribution: no conf-shift or JS figure, see the table notes).
//
// Every file is written atomically (io::write_file_atomic); results.json is only read. The files and their
// meaning are documented in docs/compare.md, "Report". Layer: report (host only; links cairo for the PNGs).

#include <qprob/io/atomic_file.hpp>
#include <qprob/report/figures.hpp>
#include <qprob/report/results.hpp>
#include <qprob/report/tables.hpp>
#include <qprob/version.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qprob::report {

namespace report_detail {

/// The SVG document without its XML declaration, for inlining in HTML.
inline std::string inline_svg(const std::string& svg) {
  const auto start = svg.find("<svg");
  return start == std::string::npos ? svg : svg.substr(start);
}

/// Flattens the settings objects into "a.b.c" -> JSON text rows.
inline void flatten(const nlohmann::ordered_json& j, const std::string& prefix, std::vector<std::vector<std::string>>& rows) {
  if (j.is_object() && !j.empty()) {
    for (const auto& [k, v] : j.items()) {
      flatten(v, prefix.empty() ? k : prefix + "." + k, rows);
    }
    return;
  }
  rows.push_back({prefix, j.is_string() ? j.get<std::string>() : j.dump()});
}

inline constexpr const char* css = R"(body{font-family:"DejaVu Sans",Verdana,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
caption{caption-side:top;text-align:left;font-weight:bold;padding:4px 0;max-width:1100px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right;white-space:nowrap}
thead th{background:#e8eef6}tbody th{text-align:left;background:#f6f6f6}
p.notes{font-size:12px;color:#555;max-width:1100px}
.figrow{display:flex;flex-wrap:wrap;gap:12px}figure{margin:8px 0}.figrow svg{max-width:100%;height:auto;border:1px solid #ddd}
)";

/// A next-token task seen as a task_result for reliability_figure(): its answers are True/False, so the figure's
/// title gives ECE (num_choices 2); there is no paired choice data.
inline task_result as_task_result(const next_token_task& t) {
  task_result r;
  r.name        = t.name;
  r.n           = t.n;
  r.num_choices = 2;
  r.full        = t.full;
  r.quantized   = t.quantized;
  return r;
}

inline void figure_row(std::string& h, const std::vector<std::pair<std::string, std::string>>& figures) {
  h += "<div class=\"figrow\">\n";
  for (const auto& [heading, svg] : figures) {
    h += "<figure>\n<figcaption>" + escape_xml(heading) + "</figcaption>\n" + inline_svg(svg) + "</figure>\n";
  }
  h += "</div>\n";
}

}  // namespace report_detail

/// Everything write_report produced, in the order written.
struct report_files {
  std::vector<std::filesystem::path> files;
};

/// The self-contained HTML page: settings, the three tables, figure 2 and per task both figures, then the
/// next-token section (its table and one reliability diagram per task), SVG inline. `figures` are (heading, svg)
/// pairs in display order: figure 2 first, then (reliability, confidence shift) per multiple-choice task;
/// `next_token_figures` one reliability diagram per next-token task.
[[nodiscard]] inline std::string report_html(const results& r,
                                             const std::vector<std::pair<std::string, std::string>>& figures,
                                             const std::vector<std::pair<std::string, std::string>>& next_token_figures = {}) {
  using report_detail::inline_svg;
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>qprob compare: " +
                  escape_xml(r.full_label) + " vs " + escape_xml(r.quantized_label) + "</title>\n<style>\n" +
                  report_detail::css + "</style>\n</head>\n<body>\n";
  h += "<h1>qprob compare: " + escape_xml(r.full_label) + " vs " + escape_xml(r.quantized_label) + "</h1>\n";
  h += "<p>Rendered by qprob " + escape_xml(std::string(version_string)) + " from " +
       escape_xml(std::filesystem::path(r.file).filename().string()) +
       ". Values x100 unless stated; significance level alpha = " + escape_xml(format_stat(r.alpha)) + ".</p>\n";
  if (!r.tasks.empty()) {
    h += "<h2>Tables</h2>\n";
    h += to_html(table1_display(r), "table1");
    h += to_html(table_confidence_display(r), "table_confidence");
    h += to_html(table_paired(r), "table_paired");
    h += "<h2>Figures</h2>\n";
  }
  for (std::size_t i = 0; i < figures.size(); ++i) {
    const bool pair_start = i > 0 && (i - 1) % 2 == 0;  // figure 0 alone, then (reliability, shift) per task
    if (i == 0 || pair_start) {
      h += i == 0 ? "<div class=\"figrow\">\n" : "</div>\n<div class=\"figrow\">\n";
    }
    h += "<figure>\n<figcaption>" + escape_xml(figures[i].first) + "</figcaption>\n" + inline_svg(figures[i].second) +
         "</figure>\n";
  }
  if (!figures.empty()) {
    h += "</div>\n";
  }
  if (!r.next_token_tasks.empty()) {
    h += "<h2>Next-token (Price-of-Efficiency) tasks</h2>\n";
    h += to_html(table_next_token_display(r), "table_next_token");
    if (!next_token_figures.empty()) {
      report_detail::figure_row(h, next_token_figures);
    }
  }
  std::vector<std::vector<std::string>> rows;
  report_detail::flatten(r.settings, "", rows);
  table settings;
  settings.caption = "Run settings (as recorded in results.json)";
  settings.header  = {"setting", "value"};
  settings.rows    = rows;
  h += "<h2>Settings</h2>\n" + to_html(settings, "settings");
  h += "</body>\n</html>\n";
  return h;
}

/// Reads <out_dir>/results.json and writes the report files listed at the top of this header under out_dir.
/// @throws format_error naming results.json and the key for a schema violation; format_error naming the output
///         file for an I/O failure (nothing half-written is left behind).
inline report_files write_report(const std::filesystem::path& out_dir) {
  const results r = read_results(out_dir / "results.json");
  const auto tables_dir  = out_dir / "tables";
  const auto figures_dir = out_dir / "figures";
  std::filesystem::create_directories(tables_dir);
  std::filesystem::create_directories(figures_dir);
  report_files out;
  const auto put = [&](const std::filesystem::path& path, const std::string& bytes) {
    io::write_file_atomic(path, bytes);
    out.files.push_back(path);
  };
  if (!r.tasks.empty()) {
    put(tables_dir / "table1.md", to_markdown(table1_display(r)));
    put(tables_dir / "table1.csv", to_csv(table1_csv(r)));
    put(tables_dir / "table_confidence.md", to_markdown(table_confidence_display(r)));
    put(tables_dir / "table_confidence.csv", to_csv(table_confidence_csv(r)));
    put(tables_dir / "table_paired.md", to_markdown(table_paired(r)));
    put(tables_dir / "table_paired.csv", to_csv(table_paired(r, "")));
  }
  if (!r.next_token_tasks.empty()) {
    put(tables_dir / "table_next_token.md", to_markdown(table_next_token_display(r)));
    put(tables_dir / "table_next_token.csv", to_csv(table_next_token_csv(r)));
  }

  std::vector<std::pair<std::string, std::string>> figures, next_token_figures;
  const auto figure = [&](std::vector<std::pair<std::string, std::string>>& into, const std::string& stem,
                          const std::string& heading, const canvas& c) {
    const auto svg = to_svg(c);
    put(figures_dir / (stem + ".svg"), svg);
    put(figures_dir / (stem + ".png"), to_png(c));
    into.emplace_back(heading, svg);
  };
  if (!r.tasks.empty()) {
    figure(figures, "js_distance", "Figure 2: mean Jensen-Shannon distance per task", js_distance_figure(r));
  }
  for (const auto& t : r.tasks) {
    figure(figures, "reliability_" + t.name, t.name + ": reliability diagram", reliability_figure(r, t));
    figure(figures, "conf_shift_" + t.name, t.name + ": confidence shift by full-model confidence (Figures 1 and 3)",
           conf_shift_figure(r, t));
  }
  for (const auto& t : r.next_token_tasks) {
    figure(next_token_figures, "reliability_" + t.name, t.name + ": reliability diagram of the generated token",
           reliability_figure(r, report_detail::as_task_result(t)));
  }
  put(out_dir / "report.html", report_html(r, figures, next_token_figures));
  return out;
}

}  // namespace qprob::report
