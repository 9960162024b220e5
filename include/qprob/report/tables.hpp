// SPDX-License-Identifier: Apache-2.0
#pragma once
// The report's tables, shaped like the paper's (Proskurina et al. 2024):
//   table 1           accuracy and calibration error per task, full model and the change after quantization
//   table_confidence  Conf, Conf_err, Conf_true and H per task, full -> quantized (Tables 2, 4 and 5)
//   table_paired      the divergence and test statistics behind the marks (JSD, KL, flip rate, JS distance, p)
//   table_next_token  next-token (Price-of-Efficiency) tasks: Acc., ECE, ACE, Conf., Conf_err, H and agreement
// Each comes in a display form (Markdown and HTML: one row per model, the quantized cells carrying the change
// and the significance mark) and a tidy CSV form (one row per task, full / quantized / delta in columns).
//
// Rounding (docs/compare.md): probabilities and calibration errors are shown x100 with two decimals, entropy
// in bits x100 with two decimals, all with printf("%.2f") of the double (the correctly rounded decimal of
// the stored value); a change is 100 * (quantized - full) computed from the unrounded values, then rounded
// the same way and signed ("+0.25", "-1.06"); p-values and t statistics use "%.4g". NaN shows as "n/a" (CSV:
// empty). "-0.00" is written "0.00" ("+0.00" for a change).
// Layer: report (host only).

#include <qprob/report/results.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace qprob::report {

/// A rectangular table with its caption and notes; cells are plain text (escaped by each writer).
struct table {
  std::string caption;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> notes;
};

namespace tables_detail {

inline std::string printf_double(const char* format, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, x);
  return buf;
}

}  // namespace tables_detail

/// x100 with two decimals; "n/a" (or `missing`) for NaN.
[[nodiscard]] inline std::string format_percent(double x, std::string_view missing = "n/a") {
  if (std::isnan(x)) {
    return std::string(missing);
  }
  auto s = tables_detail::printf_double("%.2f", 100.0 * x);
  return s == "-0.00" ? std::string("0.00") : s;
}

/// 100 * (q - f), signed, two decimals; "n/a" (or `missing`) when either is NaN.
[[nodiscard]] inline std::string format_change(double f, double q, std::string_view missing = "n/a") {
  if (std::isnan(f) || std::isnan(q)) {
    return std::string(missing);
  }
  auto s = tables_detail::printf_double("%+.2f", 100.0 * (q - f));
  return s == "-0.00" ? std::string("+0.00") : s;
}

/// A p-value, t statistic or distance with four significant digits ("%.4g"); `missing` for NaN.
[[nodiscard]] inline std::string format_stat(double x, std::string_view missing = "n/a") {
  return std::isnan(x) ? std::string(missing) : tables_detail::printf_double("%.4g", x);
}

/// True when p is a number below alpha (a NaN p is never significant).
[[nodiscard]] inline bool significant(double p, double alpha) noexcept { return !std::isnan(p) && p < alpha; }

namespace tables_detail {

/// "value" for the full row, "value<mark> (change)" for the quantized row.
inline std::string quantized_cell(double f, double q, bool mark, const char* symbol) {
  return format_percent(q) + (mark ? symbol : "") + " (" + format_change(f, q) + ")";
}

inline std::string ce_name(const task_result& t) { return t.binary() ? "ECE" : "ACE"; }
inline double ce_of(const task_result& t, const model_result& m) { return t.binary() ? m.ece : m.ace; }

inline std::string alpha_text(double alpha) { return format_stat(alpha); }

}  // namespace tables_detail

// ---- table 1: accuracy and calibration error ----------------------------------------------------------------

/// Paper Table 1: per task Acc. and CE (ECE for binary tasks, ACE otherwise) of the full model, and the
/// quantized model's values with the change; a dagger marks an accuracy change with McNemar p < alpha.
[[nodiscard]] inline table table1_display(const results& r) {
  using namespace tables_detail;
  table t;
  t.caption = "Table 1: zero-shot accuracy (Acc.) and calibration error (CE) x100, full model and after "
              "quantization (change in parentheses).";
  t.header = {"Model"};
  for (const auto& task : r.tasks) {
    t.header.push_back(task.name + " Acc.↑");
    t.header.push_back(task.name + " CE↓ (" + ce_name(task) + ")");
  }
  std::vector<std::string> full{r.full_label};
  std::vector<std::string> quant{r.quantized_label};
  for (const auto& task : r.tasks) {
    full.push_back(format_percent(task.full.acc));
    full.push_back(format_percent(ce_of(task, task.full)));
    quant.push_back(quantized_cell(task.full.acc, task.quantized.acc, significant(task.paired.mcnemar_p, r.alpha), "†"));
    quant.push_back(quantized_cell(ce_of(task, task.full), ce_of(task, task.quantized), false, ""));
  }
  t.rows = {full, quant};
  t.notes = {"CE is the expected calibration error (ECE) for binary tasks and the adaptive calibration error (ACE) "
             "for multi-class tasks, as in the paper.",
             "Changes are 100 x (quantized - full) from the unrounded values. † marks an accuracy change with "
             "McNemar p < " + alpha_text(r.alpha) + "."};
  return t;
}

/// Table 1 as tidy CSV: one row per task.
[[nodiscard]] inline table table1_csv(const results& r) {
  using namespace tables_detail;
  table t;
  t.header = {"task", "n", "num_choices", "acc_full", "acc_quantized", "acc_change", "acc_mcnemar_p", "acc_significant",
              "ce_kind", "ce_full", "ce_quantized", "ce_change"};
  for (const auto& task : r.tasks) {
    const double cf = ce_of(task, task.full);
    const double cq = ce_of(task, task.quantized);
    t.rows.push_back({task.name, std::to_string(task.n), std::to_string(task.num_choices),
                      format_percent(task.full.acc, ""), format_percent(task.quantized.acc, ""),
                      format_change(task.full.acc, task.quantized.acc, ""), format_stat(task.paired.mcnemar_p, ""),
                      significant(task.paired.mcnemar_p, r.alpha) ? "1" : "0", ce_name(task),
                      format_percent(cf, ""), format_percent(cq, ""), format_change(cf, cq, "")});
  }
  return t;
}

// ---- confidence table (paper Tables 2, 4, 5) --------------------------------------------------------------

/// Paper Table 2 per task (Tables 4 and 5 merged): Conf., Conf_err, Conf_true, H (bits x100); the quantized
/// row carries the change and "*" where the paired t-test has p < alpha (Conf_true always has its test; Conf
/// and H only when the pipeline wrote ttest_conf / ttest_entropy).
[[nodiscard]] inline table table_confidence_display(const results& r) {
  using namespace tables_detail;
  table t;
  t.caption = "Table 2: mean confidence (Conf.), confidence in wrong predictions (Conf_err), confidence in the "
              "true class (Conf_true) x100 and mean predictive entropy H (bits x100), full model and after "
              "quantization (change in parentheses).";
  t.header = {"Task", "Model", "Conf.", "Conf_err", "Conf_true", "H"};
  for (const auto& task : r.tasks) {
    const auto& f = task.full;
    const auto& q = task.quantized;
    const auto& p = task.paired;
    t.rows.push_back({task.name, r.full_label, format_percent(f.conf), format_percent(f.conf_err),
                      format_percent(f.conf_true), format_percent(f.entropy_bits)});
    t.rows.push_back({task.name, r.quantized_label,
                      quantized_cell(f.conf, q.conf, p.ttest_conf && significant(p.ttest_conf->p, r.alpha), "*"),
                      quantized_cell(f.conf_err, q.conf_err, false, ""),
                      quantized_cell(f.conf_true, q.conf_true, significant(p.ttest_conf_true.p, r.alpha), "*"),
                      quantized_cell(f.entropy_bits, q.entropy_bits,
                                     p.ttest_entropy && significant(p.ttest_entropy->p, r.alpha), "*")});
  }
  t.notes = {"* marks a significant difference between the full and the quantized model at alpha = " +
                 alpha_text(r.alpha) + " (paired t-test; Conf_true always, Conf and H where the run tested them).",
             "Changes are 100 x (quantized - full) from the unrounded values; Conf_err is n/a when a model made no "
             "wrong prediction."};
  return t;
}

/// The confidence table as tidy CSV: one row per task, *_p empty where the run has no test for that column.
[[nodiscard]] inline table table_confidence_csv(const results& r) {
  table t;
  t.header = {"task", "n", "conf_full", "conf_quantized", "conf_change", "conf_p", "conf_err_full", "conf_err_quantized",
              "conf_err_change", "conf_true_full", "conf_true_quantized", "conf_true_change", "conf_true_t", "conf_true_p",
              "conf_true_significant", "entropy_bits_full", "entropy_bits_quantized", "entropy_bits_change", "entropy_p"};
  for (const auto& task : r.tasks) {
    const auto& f = task.full;
    const auto& q = task.quantized;
    const auto& p = task.paired;
    t.rows.push_back({task.name, std::to_string(task.n), format_percent(f.conf, ""), format_percent(q.conf, ""),
                      format_change(f.conf, q.conf, ""), p.ttest_conf ? format_stat(p.ttest_conf->p, "") : "",
                      format_percent(f.conf_err, ""), format_percent(q.conf_err, ""), format_change(f.conf_err, q.conf_err, ""),
                      format_percent(f.conf_true, ""), format_percent(q.conf_true, ""),
                      format_change(f.conf_true, q.conf_true, ""), format_stat(p.ttest_conf_true.t, ""),
                      format_stat(p.ttest_conf_true.p, ""), significant(p.ttest_conf_true.p, r.alpha) ? "1" : "0",
                      format_percent(f.entropy_bits, ""), format_percent(q.entropy_bits, ""),
                      format_change(f.entropy_bits, q.entropy_bits, ""),
                      p.ttest_entropy ? format_stat(p.ttest_entropy->p, "") : ""});
  }
  return t;
}

// ---- paired statistics --------------------------------------------------------------------------------------

/// Divergences and tests per task, as stored (four significant digits).
[[nodiscard]] inline table table_paired(const results& r, std::string_view missing = "n/a") {
  table t;
  t.caption = "Paired statistics: mean JS divergence (nats), mean KL(full || quantized) (nats), mean JS distance, "
              "prediction flip rate, paired t-test on the true-class probability, McNemar test on correctness.";
  t.header = {"task", "n", "jsd", "kl", "js_distance", "flip_rate", "ttest_conf_true_t", "ttest_conf_true_p", "mcnemar_p"};
  for (const auto& task : r.tasks) {
    const auto& p = task.paired;
    t.rows.push_back({task.name, std::to_string(task.n), format_stat(p.jsd, missing), format_stat(p.kl, missing),
                      format_stat(p.js_distance, missing), format_stat(p.flip_rate, missing),
                      format_stat(p.ttest_conf_true.t, missing), format_stat(p.ttest_conf_true.p, missing),
                      format_stat(p.mcnemar_p, missing)});
  }
  return t;
}

// ---- next-token (Price-of-Efficiency) tasks ----------------------------------------------------------------------

/// Next-token tasks: accuracy, ECE, ACE (equal-mass top-label), Conf. (probability of the generated token),
/// Conf_err and H (bits x100, over the whole vocabulary), full -> quantized with the change; a dagger marks an
/// accuracy change with McNemar p < alpha, "*" a Conf / H change with paired t-test p < alpha. The quantized
/// row also gives the agreement of the generated tokens.
[[nodiscard]] inline table table_next_token_display(const results& r) {
  using namespace tables_detail;
  table t;
  t.caption = "Next-token (Price-of-Efficiency) tasks: accuracy of the generated token (Acc.), calibration errors "
              "(ECE, ACE), probability of the generated token (Conf.), Conf. over wrong answers (Conf_err) x100 and "
              "entropy of the full-vocabulary distribution H (bits x100), full model and after quantization (change "
              "in parentheses); Agree.: generated token unchanged x100.";
  t.header = {"Task", "Model", "Acc.", "ECE", "ACE", "Conf.", "Conf_err", "H", "Agree."};
  for (const auto& task : r.next_token_tasks) {
    const auto& f = task.full;
    const auto& q = task.quantized;
    const auto& p = task.paired;
    t.rows.push_back({task.name, r.full_label, format_percent(f.acc), format_percent(f.ece), format_percent(f.ace),
                      format_percent(f.conf), format_percent(f.conf_err), format_percent(f.entropy_bits), ""});
    t.rows.push_back({task.name, r.quantized_label,
                      quantized_cell(f.acc, q.acc, significant(p.mcnemar_p, r.alpha), "†"),
                      quantized_cell(f.ece, q.ece, false, ""), quantized_cell(f.ace, q.ace, false, ""),
                      quantized_cell(f.conf, q.conf, significant(p.ttest_conf.p, r.alpha), "*"),
                      quantized_cell(f.conf_err, q.conf_err, false, ""),
                      quantized_cell(f.entropy_bits, q.entropy_bits, significant(p.ttest_entropy.p, r.alpha), "*"),
                      format_percent(p.agreement)});
  }
  t.notes = {"These tasks score one greedy token over the whole vocabulary, so the choice-based numbers of the other "
             "tables (Conf_true, JS divergence, confidence-shift bins) do not apply to them.",
             "† marks an accuracy change with McNemar p < " + alpha_text(r.alpha) + "; * a change of Conf. or H with "
             "paired t-test p < " + alpha_text(r.alpha) + "."};
  return t;
}

/// The next-token table as tidy CSV: one row per task.
[[nodiscard]] inline table table_next_token_csv(const results& r) {
  table t;
  t.header = {"task", "n", "acc_full", "acc_quantized", "acc_change", "acc_mcnemar_p", "ece_full", "ece_quantized",
              "ece_change", "ace_full", "ace_quantized", "ace_change", "conf_full", "conf_quantized", "conf_change",
              "conf_p", "conf_err_full", "conf_err_quantized", "conf_err_change", "entropy_bits_full",
              "entropy_bits_quantized", "entropy_bits_change", "entropy_p", "agreement"};
  for (const auto& task : r.next_token_tasks) {
    const auto& f = task.full;
    const auto& q = task.quantized;
    const auto& p = task.paired;
    t.rows.push_back({task.name, std::to_string(task.n), format_percent(f.acc, ""), format_percent(q.acc, ""),
                      format_change(f.acc, q.acc, ""), format_stat(p.mcnemar_p, ""), format_percent(f.ece, ""),
                      format_percent(q.ece, ""), format_change(f.ece, q.ece, ""), format_percent(f.ace, ""),
                      format_percent(q.ace, ""), format_change(f.ace, q.ace, ""), format_percent(f.conf, ""),
                      format_percent(q.conf, ""), format_change(f.conf, q.conf, ""), format_stat(p.ttest_conf.p, ""),
                      format_percent(f.conf_err, ""), format_percent(q.conf_err, ""),
                      format_change(f.conf_err, q.conf_err, ""), format_percent(f.entropy_bits, ""),
                      format_percent(q.entropy_bits, ""), format_change(f.entropy_bits, q.entropy_bits, ""),
                      format_stat(p.ttest_entropy.p, ""), format_percent(p.agreement, "")});
  }
  return t;
}

// ---- writers ----------------------------------------------------------------------------------------------------

/// GitHub-flavoured Markdown: caption line, blank line, the table ('|' in cells escaped), blank line, notes.
[[nodiscard]] inline std::string to_markdown(const table& t) {
  const auto cell = [](const std::string& s) {
    std::string out;
    for (const char c : s) {
      if (c == '|') {
        out += '\\';
      }
      out += c;
    }
    return out;
  };
  std::string out;
  if (!t.caption.empty()) {
    out += t.caption + "\n\n";
  }
  const auto row = [&](const std::vector<std::string>& cells) {
    out += '|';
    for (const auto& c : cells) {
      out += ' ' + cell(c) + " |";
    }
    out += '\n';
  };
  row(t.header);
  out += '|';
  for (std::size_t i = 0; i < t.header.size(); ++i) {
    out += i == 0 ? " --- |" : " ---: |";
  }
  out += '\n';
  for (const auto& r : t.rows) {
    row(r);
  }
  if (!t.notes.empty()) {
    out += '\n';
    for (const auto& n : t.notes) {
      out += n + "\n";
    }
  }
  return out;
}

/// RFC 4180 CSV: header then rows, "\r\n"-free ('\n' line ends), fields quoted only when they contain ',', '"'
/// or a line break. Caption and notes are not part of the CSV.
[[nodiscard]] inline std::string to_csv(const table& t) {
  const auto field = [](const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos) {
      return s;
    }
    std::string out = "\"";
    for (const char c : s) {
      out += c == '"' ? std::string("\"\"") : std::string(1, c);
    }
    return out + "\"";
  };
  std::string out;
  const auto row = [&](const std::vector<std::string>& cells) {
    for (std::size_t i = 0; i < cells.size(); ++i) {
      if (i > 0) {
        out += ',';
      }
      out += field(cells[i]);
    }
    out += '\n';
  };
  row(t.header);
  for (const auto& r : t.rows) {
    row(r);
  }
  return out;
}

/// Escapes &, <, >, " and ' for HTML/XML text and attributes.
[[nodiscard]] inline std::string escape_xml(std::string_view s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

/// An HTML <table> with <caption>, the notes in a following <p class="notes">; `id` names the table.
[[nodiscard]] inline std::string to_html(const table& t, std::string_view id) {
  std::string out = "<table id=\"" + escape_xml(id) + "\">\n";
  if (!t.caption.empty()) {
    out += "<caption>" + escape_xml(t.caption) + "</caption>\n";
  }
  out += "<thead><tr>";
  for (const auto& h : t.header) {
    out += "<th>" + escape_xml(h) + "</th>";
  }
  out += "</tr></thead>\n<tbody>\n";
  for (const auto& r : t.rows) {
    out += "<tr>";
    for (std::size_t i = 0; i < r.size(); ++i) {
      out += (i == 0 ? "<th scope=\"row\">" : "<td>") + escape_xml(r[i]) + (i == 0 ? "</th>" : "</td>");
    }
    out += "</tr>\n";
  }
  out += "</tbody>\n</table>\n";
  if (!t.notes.empty()) {
    out += "<p class=\"notes\">";
    for (std::size_t i = 0; i < t.notes.size(); ++i) {
      out += (i ? "<br>" : "") + escape_xml(t.notes[i]);
    }
    out += "</p>\n";
  }
  return out;
}

}  // namespace qprob::report
