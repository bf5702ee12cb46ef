"""One self-contained HTML report of benchmark results and evaluation runs.

``build_report(inputs, out_dir)`` reads any mix of

* benchmark result files (``benchmarks/results/<name>.json``, format of ``../shared/BENCHMARKS.md``) or a
  folder holding them: results table (mean ± std over seeds / support draws) and per-task bar charts;
* ``medad evaluate`` run folders (``metrics.json``, ``scores.csv``, optional ``heatmaps/``);
* ``medad fewshot evaluate`` run folders (``fewshot_metrics_<task>.json``, ``scores_<task>_k<K>_d<draw>.csv``,
  ``support_weights_<task>_k<K>_d<draw>.json``, ``heatmaps_<task>_k<K>/``);
* ``medad demo`` folders (``demo.json``, ``scores.csv``, ``heatmaps/`` named ``normal_*`` / ``abnormal_*``);

and writes ``out_dir/index.html`` with every figure embedded as a base64 PNG (the same PNGs are saved
beside it).  Per-image scores give ROC curves and normal-vs-abnormal score distributions (box + strip, as
D²4FAD Fig. 2); heat-map folders give a grid of the most and least anomalous test images; few-shot support
weights give a queries × supports matrix (D²4FAD Fig. 6).  What the inputs cannot show is said on the page.

One module per concern: :mod:`~medad.report.inputs` (reading), :mod:`~medad.report.tables`,
:mod:`~medad.report.figures`, :mod:`~medad.report.page` (sections and ``index.html``).
"""

from medad.report.inputs import ReportInputs, collect_inputs, read_scores_csv
from medad.report.page import Report, build_report
from medad.report.tables import mean_std_cell, summary_rows

__all__ = ["Report", "ReportInputs", "build_report", "collect_inputs", "mean_std_cell", "read_scores_csv",
           "summary_rows"]
