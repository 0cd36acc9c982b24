"""The report: figures and tables from the stages' outputs, rendered as one self-contained HTML page."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from deepprune.config import Params, VariantConfig
from deepprune.metric_names import (AUROC_WITHIN_PROBLEM, AUROC_WITHIN_PROBLEM_COUNT, MATCHED_MINUS_RANDOM,
                                    accuracy_at_name, prefix_cost_name, tnr_at_fnr_name, tnr_at_name, tpr_at_name)
from deepprune.plots import (plot_judge_comparison, plot_pareto, plot_redundancy, plot_reliability, plot_roc,
                             plot_score_distributions, plot_truncation)
from deepprune.reference import PAPER_BASELINE_AUROC, PAPER_ONLINE, PAPER_TABLE1, PAPER_TRANSFER, paper_row_for
from deepprune.truncate import prefix_name


@dataclass
class CorpusResults:
    """What the report needs of one corpus."""

    sample: Mapping[str, Any]
    label: Mapping[str, Any]
    judge: Mapping[str, Any]
    per_problem_share: Sequence[float]
    labels: Sequence[int]
    scores: Mapping[str, Sequence[float]]
    folds: Mapping[str, Any]
    prune: Mapping[str, Any] | None = None
    judge_lm: Mapping[str, Any] | None = None     # reports/metrics/judge_lm_<corpus>.json
    sweep: Mapping[str, Any] | None = None        # data/sweep/<corpus>/results.json
    ablate: Mapping[str, Any] | None = None       # data/ablate/<corpus>/results.json
    online: Mapping[str, Any] | None = None       # reports/metrics/online_<corpus>.json + data/online/<corpus>/meta.json


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if pct:
            return f"{value:.1%}"
        return str(int(value)) if value.is_integer() and abs(value) >= 2 else f"{value:.3f}"
    return html.escape(str(value))


def build_figures(params: Params, results: Mapping[str, CorpusResults]) -> dict[str, go.Figure]:
    """Every figure of the report, by file stem."""
    figs = {"redundancy": plot_redundancy({c: r.label["label/same_answer_share"] for c, r in results.items()},
                                          {c: r.per_problem_share for c, r in results.items()})}
    shown = [params.judge.baseline, params.judge.primary]
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for corpus, res in results.items():
        figs[f"scores_{corpus}"] = plot_score_distributions(res.labels, {n: res.scores[n] for n in shown}, corpus)
        rocs = {}
        for name, doc in res.folds["variants"].items():
            rocs[name] = (doc["roc"]["fpr"], doc["roc"]["tpr"], res.judge.get(f"judge/{name}/pooled_auroc") or float("nan"))
        figs[f"roc_{corpus}"] = plot_roc(rocs, corpus)
        curves = {name: doc["reliability"] for name, doc in res.folds["variants"].items() if doc.get("calibrated")}
        primary = res.folds["variants"].get(params.judge.primary, {})
        if primary.get("calibrated"):
            curves[f"{params.judge.primary} (uncalibrated)"] = primary["reliability_uncalibrated"]
        if curves:
            figs[f"reliability_{corpus}"] = plot_reliability(curves, corpus)
        if res.prune is not None:
            figs[f"pareto_{corpus}"] = plot_pareto(res.prune["summary"], corpus, res.prune["n"])
        if res.ablate is not None:
            judge = res.ablate["judge"]
            variant = params.judge.variants.get(judge)
            paper = None
            row = _table1_row(variant) if variant is not None else None
            if row is not None:
                paper = {"tokens": (500, PAPER_TABLE1["tokens_500"][row][0]),
                         "reasoning_words": (25, PAPER_TABLE1["reasoning_words_25"][row][0])}
            figs[f"truncation_{corpus}"] = plot_truncation(res.ablate["rows"], judge, corpus, paper)
        table[corpus] = {name: (res.judge.get(f"judge/{name}/auroc") or 0.0, res.judge.get(f"judge/{name}/auroc_std") or 0.0)
                         for name in params.judge.variants}
    paper_set = _paper_set(params)
    paper = {name: _paper_auroc_tnr(v, paper_set)[0] for name, v in params.judge.variants.items()}
    figs["judge_comparison"] = plot_judge_comparison(
        table, paper, f"paper (Table 1, {paper_set.replace('_', ' ')}; SentenceBERT: Figure 2)")
    return figs


def _paper_set(params: Params) -> str:
    """Table 1's half closest to our truncation (its 25-reasoning-words or first-500-tokens rows)."""
    return "reasoning_words_25" if params.judge.truncation.strategy == "reasoning_words" else "tokens_500"


def _paper_auroc_tnr(variant: VariantConfig, paper_set: str) -> tuple[float | None, float | None]:
    """The paper's (AUROC, TNR) for the recipe a variant follows (none for a judge that reads text features: the
    paper has no such judge)."""
    if variant.kind == "sbert_cosine":
        return PAPER_BASELINE_AUROC["SentenceBERT cosine"], None
    row = _table1_row(variant)
    return (None, None) if row is None else PAPER_TABLE1[paper_set][row]


def _table1_row(variant: VariantConfig) -> str | None:
    """Table 1's row for a trained embedding judge's recipe; None for any other judge, and for one that reads text
    features (the paper has no such judge)."""
    if variant.kind != "encoder" or variant.features:
        return None
    return paper_row_for(variant.loss, variant.oversample)


def _redundancy_table(results: Mapping[str, CorpusResults]) -> str:
    keys = [("label/n_problems", "problems", False), ("label/n_traces", "traces", False),
            ("label/n_pairs", "pairs", False), ("label/same_answer_share", "same-answer share", True),
            ("label/problems_with_disagreement", "problems with a disagreement", False),
            ("label/mean_distinct_answers", "distinct answers per problem", False),
            ("label/no_answer_share", "traces with no answer", True),
            ("label/trace_accuracy", "trace accuracy", True), ("label/majority_vote_accuracy", "majority-vote accuracy", True),
            ("label/median_trace_tokens", "median tokens per trace", False)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in results)
    rows = "".join(f"<tr><td>{label}</td>" + "".join(f"<td>{_fmt(r.label.get(k), pct)}</td>" for r in results.values())
                   + "</tr>" for k, label, pct in keys)
    return f"<table><tr><th></th>{head}</tr>{rows}</table>"


def _judge_table(params: Params, corpus: str, res: CorpusResults) -> str:
    cfg = params.judge
    fnr_key, thr = tnr_at_fnr_name(cfg.fnr), f"{cfg.threshold:g}"
    paper_set = _paper_set(params)
    rows = []
    for name, variant in cfg.variants.items():
        get = lambda key: res.judge.get(f"judge/{name}/{key}")
        auroc = f"{_fmt(get('auroc'))} ± {_fmt(get('auroc_std'))} [{_fmt(get('auroc_min'))}, {_fmt(get('auroc_max'))}]"
        paper = " / ".join(_fmt(v) for v in _paper_auroc_tnr(variant, paper_set))
        role = " (primary)" if name == cfg.primary else " (baseline)" if name == cfg.baseline else ""
        rows.append(f"<tr><td>{html.escape(name)}{role}</td><td>{auroc}</td>"
                    f"<td>{_fmt(get(fnr_key))} ± {_fmt(get(fnr_key + '_std'))}</td>"
                    f"<td>{_fmt(get(tnr_at_name(cfg.threshold)))}</td><td>{_fmt(get(tpr_at_name(cfg.threshold)))}</td>"
                    f"<td>{_fmt(get(accuracy_at_name(cfg.threshold)))}</td>"
                    f"<td>{_fmt(get('pooled_auroc'))}</td><td>{_fmt(get(AUROC_WITHIN_PROBLEM))} "
                    f"({_fmt(get(AUROC_WITHIN_PROBLEM_COUNT))})</td>"
                    f"<td class='theirs'>{paper}</td></tr>")
    head = (f"<tr><th>judge</th><th>AUROC mean ± std [min, max] over folds</th><th>TNR at FNR={cfg.fnr:g}</th>"
            f"<th>TNR at {thr}</th><th>TPR at {thr}</th><th>accuracy at {thr}</th><th>pooled out-of-fold AUROC</th>"
            f"<th>AUROC within a problem (problems with both labels)</th>"
            f"<th class='theirs'>paper AUROC / TNR (Table 1, {paper_set.replace('_', ' ')}; "
            "SentenceBERT: Figure 2)</th></tr>")
    primary, baseline = res.judge.get(f"judge/{cfg.primary}/auroc"), res.judge.get(f"judge/{cfg.baseline}/auroc")
    verdict = ""
    if primary is not None and baseline is not None:
        word = "beats" if primary > baseline else "does <b>not</b> beat"
        verdict = (f"<p>On held-out problems, the trained judge <code>{cfg.primary}</code> {word} the baseline "
                   f"<code>{cfg.baseline}</code>: AUROC {primary:.3f} against {baseline:.3f}, on the same pairs and folds.</p>")
    return f"<table>{head}{''.join(rows)}</table>{verdict}"


def _judge_lm_table(params: Params, res: CorpusResults) -> str:
    """The causal-LM judge (fine-tuned and zero-shot) beside the embedding judges, on the same held-out pairs."""
    m, cfg = res.judge_lm or {}, params.judge_lm
    fnr_key = tnr_at_fnr_name(params.judge.fnr)
    names = ["causal_lm", "causal_lm_zeroshot", *cfg.compare]
    paper = {"causal_lm": "0.8701 / 0.8186 (Qwen3-4B, full FT, Table 1)",
             "causal_lm_zeroshot": f"{PAPER_BASELINE_AUROC['Qwen3-4B-Instruct zero-shot']} / n/a (Figure 2)",
             "sbert_cosine": f"{PAPER_BASELINE_AUROC['SentenceBERT cosine']} / n/a (Figure 2)"}
    rows = []
    for name in names:
        get = lambda key: m.get(f"judge_lm/{name}/{key}")
        if get("auroc") is None and get("auroc_folds") is None:
            continue
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(get('auroc'))} ± {_fmt(get('auroc_std'))} "
                    f"[{_fmt(get('auroc_min'))}, {_fmt(get('auroc_max'))}]</td><td>{_fmt(get(fnr_key))} ± "
                    f"{_fmt(get(fnr_key + '_std'))}</td><td>{_fmt(get('n_pairs'))}</td>"
                    f"<td class='theirs'>{paper.get(name, '')}</td></tr>")
    tp = (f"<p>{_fmt(m.get('judge_lm/score_tokens_per_pair'))} prompt tokens a pair; training "
          f"{cfg.train.steps} steps of "
          f"{cfg.train.batch_size * cfg.train.grad_accum} pairs per fold; model "
          f"<code>{html.escape(cfg.model_path or 'SmolLM2-135M-Instruct (packaged)')}</code>, prompt "
          f"{html.escape(cfg.prompt.version)}, {cfg.train.loss} loss, LoRA {'on' if cfg.train.lora.enabled else 'off'}.</p>")
    head = (f"<tr><th>judge</th><th>AUROC mean ± std [min, max] over {_fmt(m.get('judge_lm/folds'))} folds</th>"
            f"<th>TNR at FNR={params.judge.fnr:g}</th><th>held-out pairs</th><th class='theirs'>paper AUROC / TNR</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>{tp}"


def _sweep_table(params: Params, res: CorpusResults, limit: int = 12) -> str:
    doc = res.sweep or {}
    metric, fnr_key = doc.get("metric", "auroc"), tnr_at_fnr_name(params.judge.fnr)
    points = sorted(doc.get("points", []), key=lambda p: -((p["summary"] or {}).get(metric) or -1.0))
    rows = "".join(
        f"<tr><td>{'<b>' if p['name'] == doc.get('best') else ''}{html.escape(p['name'])}"
        f"{'</b>' if p['name'] == doc.get('best') else ''}</td>"
        f"<td>{_fmt(p['summary'].get(metric))} ± {_fmt(p['summary'].get(metric + '_std'))}</td>"
        f"<td>{_fmt(p['summary'].get(fnr_key))}</td></tr>" for p in points[:limit])
    reg = doc.get("registered")
    note = (f"<p>{len(points)} distinct points ({html.escape(str(doc.get('judge')))} judge), best first"
            f"{f' (top {limit} shown)' if len(points) > limit else ''}; the best is registered in MLflow as "
            f"<code>{html.escape(reg['name'])}</code> (a new version per run; its MLflow run's tag "
            f"<code>registered_version</code> names it).</p>" if reg else
            f"<p>{len(points)} distinct points, best first.</p>")
    return (f"{note}<table><tr><th>point</th><th>{html.escape(metric)} (mean ± fold std)</th>"
            f"<th>TNR at FNR={params.judge.fnr:g}</th></tr>{rows}</table>")


def _table1(params: Params, res: CorpusResults) -> str:
    """Table 1: the four training variants at each strategy's table k, with the paper's figures beside."""
    doc = res.ablate or {}
    table_k = doc.get("table_k", {})
    index = {(r["strategy"], r["k"], r["variant"]): r["summary"] for r in doc.get("rows", [])}
    fnr_key = tnr_at_fnr_name(params.judge.fnr)
    paper_sets = {"tokens": "tokens_500", "reasoning_words": "reasoning_words_25"}
    head = "<tr><th>variant</th>" + "".join(
        f"<th>{s.replace('_', ' ')} k={k}: AUROC / TNR</th><th class='theirs'>paper ({paper_sets[s].replace('_', ' ')})</th>"
        for s, k in table_k.items()) + "</tr>"
    rows = []
    for name in (v for v in params.ablate.variants if params.judge.variants[v].kind == "encoder"):
        variant = params.judge.variants[name]
        cells = []
        for strategy, k in table_k.items():
            summary = index.get((strategy, k, name), {})
            row = _table1_row(variant)
            theirs = "—" if row is None else " / ".join(f"{v:.4f}" for v in PAPER_TABLE1[paper_sets[strategy]][row])
            cells.append(f"<td>{_fmt(summary.get('auroc'))} ± {_fmt(summary.get('auroc_std'))} / "
                         f"{_fmt(summary.get(fnr_key))}</td><td class='theirs'>{theirs}</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _prefix_costs(params: Params, corpus: str, res: CorpusResults) -> str:
    """What each prefix the label stage built costs online, from its measurement: the share of traces on which it is
    complete before the trace ends, the median tokens written by then, and how much of it a pair shares verbatim."""
    names = [prefix_name("tokens", k) for k in params.tokens_k(corpus)] + \
        [prefix_name("reasoning_words", k) for k in params.label.reasoning_words_k]
    if prefix_cost_name(names[0], "complete_before_end") not in res.label:
        return ""
    rows = "".join(f"<tr><td>{html.escape(n.replace('_', ' '))}</td>"
                   f"<td>{_fmt(res.label.get(prefix_cost_name(n, 'complete_before_end')), True)}</td>"
                   f"<td>{_fmt(res.label.get(prefix_cost_name(n, 'median_tokens')))}</td>"
                   f"<td>{_fmt(res.label.get(prefix_cost_name(n, 'shared_opening')), True)}</td></tr>" for n in names)
    return ("<table><tr><th>prefix</th><th>complete before the trace ends</th><th>median tokens written by then"
            "</th><th>median share of a pair's prefix that both open with (what a judge cannot tell apart)</th>"
            f"</tr>{rows}</table>")


def _ci(row: Mapping[str, Any], key: str, pct: bool = False, scale: float = 1.0) -> str:
    if key not in row:
        return "n/a"
    fmt = (lambda v: f"{v * scale:.1%}") if pct else (lambda v: f"{v * scale:,.0f}" if abs(v) >= 100 else f"{v * scale:.3f}")
    return f"{fmt(row[key])} <small>[{fmt(row[key + '_lo'])}, {fmt(row[key + '_hi'])}]</small>"


def _leaderboard(results: Mapping[str, CorpusResults]) -> str:
    """Methods x corpora, laid out like the paper's main table: accuracy, tokens, reduction, accuracy change."""
    pruned = {c: r.prune for c, r in results.items() if r.prune is not None}
    if not pruned:
        return "<p>No prune results.</p>"
    methods = [m["name"] for m in next(iter(pruned.values()))["methods"]]  # the stage's order, not sorted
    columns = ("<th>accuracy</th><th>tokens</th><th>token reduction vs cons@N</th><th>accuracy change (points)</th>"
               "<th>sequential depth (tokens per problem)</th><th>judge calls</th>")
    head = ("<tr><th rowspan=2>method</th>"
            + "".join(f"<th colspan=6>{html.escape(c)} (N = {p['n']}, k = {p['k']}"
                      f"{'' if p.get('strategy', 'tokens') == 'tokens' else ' reasoning words'})</th>"
                      for c, p in pruned.items())
            + "</tr><tr>" + columns * len(pruned) + "</tr>")
    rows = []
    for name in methods:
        cells = []
        for corpus, prune in pruned.items():
            row = prune["summary"].get(name, {})
            if "skipped" in row:
                cells.append(f"<td colspan=6><i>{html.escape(str(row['skipped']))}</i></td>")
                continue
            cells.append(f"<td>{_ci(row, 'accuracy', pct=True)}</td><td>{_ci(row, 'tokens')}</td>"
                         f"<td>{_ci(row, 'token_reduction', pct=True)}</td><td>{_ci(row, 'accuracy_change_pts')}</td>"
                         f"<td>{_ci(row, 'sequential_depth')}</td><td>{row.get('judge_calls', 0):,.0f}</td>")
        headline = any(p["headline"] == name for p in pruned.values())
        rows.append(f"<tr><td>{'<b>' if headline else ''}{html.escape(name)}{'</b>' if headline else ''}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are defined (None where none is)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _transfer_tables(params: Params, transfer: Mapping[str, Any]) -> str:
    """The primary judge's matrix (rows: trained on, columns: scored on) with the untrained baseline under it, then
    every variant's mean AUROC in and out of distribution, then the paper's figures, labelled as theirs."""
    corpora, primary, tnr = transfer["corpora"], transfer["primary"], tnr_at_fnr_name(params.judge.fnr)
    cells = {(c["train"], c["test"], c["variant"]): c for c in transfer["cells"]}
    online = transfer.get("online_cells", {})

    def cell(train: str, test: str, variant: str) -> str:
        c = cells[(train, test, variant)]
        m, mark = c["metrics"], " &dagger;" if f"{train}__{test}" in online and variant == primary else ""
        style = " style='background:#eef5ff'" if c["kind"] == "out-of-fold" else ""
        return f"<td{style}>{_fmt(m['auroc'])} / {_fmt(m[tnr])}{mark}</td>"

    head = "<tr><th>trained on \\ scored on</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in corpora) + "</tr>"
    rows = [f"<tr><td>{html.escape(train)}</td>" + "".join(cell(train, test, primary) for test in corpora) + "</tr>"
            for train in corpora]
    baseline = params.judge.baseline
    if baseline in params.judge.variants and all((corpora[0], t, baseline) in cells for t in corpora):
        rows.append(f"<tr><td><i>{html.escape(baseline)} (untrained)</i></td>"
                    + "".join(cell(corpora[0], test, baseline) for test in corpora) + "</tr>")
    matrix = f"<table>{head}{''.join(rows)}</table>"
    summary = []
    for variant in sorted({c["variant"] for c in transfer["cells"]}):
        inside = [c["metrics"]["auroc"] for c in transfer["cells"] if c["variant"] == variant and c["kind"] == "out-of-fold"]
        outside = [c["metrics"]["auroc"] for c in transfer["cells"] if c["variant"] == variant and c["kind"] == "transfer"]
        summary.append(f"<tr><td>{'<b>' if variant == primary else ''}{html.escape(variant)}"
                       f"{'</b>' if variant == primary else ''}</td><td>{_fmt(_mean(inside))}</td>"
                       f"<td>{_fmt(_mean(outside)) if outside else 'untrained'}</td></tr>")
    variants = ("<table><tr><th>variant</th><th>mean AUROC in distribution (diagonal)</th><th>mean AUROC across "
                f"corpora (off the diagonal)</th></tr>{''.join(summary)}</table>")
    paper = "".join(f"<tr><td>{html.escape(k)}</td><td class='theirs'>{v:.4f}</td></tr>" for k, v in PAPER_TRANSFER.items())
    note = (f"<p>&dagger; the online stage runs this judge ({html.escape(', '.join(sorted(set(online.values()))))}) on "
            "that corpus: its online results are a transfer result.</p>") if online else ""
    prefixes = ", ".join(f"{html.escape(c)}: {html.escape(p)}" for c, p in transfer["prefixes"].items())
    return (f"<p>AUROC / TNR at FNR = {params.judge.fnr:g} of <code>{html.escape(primary)}</code>, fitted on every "
            "pair of the row's corpus and scored on every pair of the column's, each corpus cut at its own "
            f"truncation ({prefixes}). The diagonal (shaded) is in-distribution: the judge stage's out-of-fold "
            "scores on held-out problems, pooled over folds like every other cell. n/a: the column has one class "
            "of pairs.</p>" + matrix + note + variants
            + "<h3>The paper's transfer figures (theirs: Qwen3-4B judges, long traces of other models)</h3>"
            + f"<table><tr><th>result</th><th class='theirs'>paper</th></tr>{paper}</table>")


def _prune_verdicts(results: Mapping[str, CorpusResults]) -> str:
    out = []
    for corpus, res in results.items():
        if res.prune is None:
            continue
        summary, headline = res.prune["summary"], res.prune["headline"]
        oracle, cons = summary["oracle"], summary["cons"]
        where = f"<li><b>{html.escape(corpus)}</b>"

        def saves(name: str) -> str:
            row = summary[name]
            share = (f"{row['token_reduction'] / oracle['token_reduction']:.0%} of the oracle's savings, "
                     f"{oracle['token_reduction']:.1%}" if oracle["token_reduction"] > 0
                     else "the oracle saves nothing here")
            return (f"saves {row['token_reduction']:.1%} of cons@N's tokens ({share}) at accuracy {row['accuracy']:.1%} "
                    f"(cons@N {cons['accuracy']:.1%}, change {row['accuracy_change_pts']:+.1f} points "
                    f"[{row['accuracy_change_pts_lo']:+.1f}, {row['accuracy_change_pts_hi']:+.1f}])."
                    f"{_against_random(res.prune, name)}")

        out.append(f"{where}: <code>{html.escape(headline)}</code> {saves(headline)}</li>")
        tuned = res.prune.get("tuned")
        name = next((m["name"] for m in res.prune["methods"] if m["kind"] == "tuned"), None)
        if tuned and name in summary and "skipped" not in summary[name]:
            taus = ", ".join(f"{float(t):g}" for _, t in sorted(tuned["taus"].items(), key=lambda kv: int(kv[0])))
            out.append(f"{where}, tau picked without peeking: <code>{html.escape(name)}</code> (tau per fold, each "
                       f"picked on the other folds' problems: {taus}) {saves(name)}</li>")
        perfect = next((m["name"] for m in res.prune["methods"] if m["kind"] == "perfect_judge"), None)
        if perfect in summary and "skipped" not in summary[perfect]:
            out.append(f"{where}, DeepPrune when its clustering is right: <code>{html.escape(perfect)}</code> (the "
                       "same clustering, resume and vote with a judge that knows which traces agree; not a ceiling "
                       f"on tokens, since a judge that merges wrongly keeps fewer seeds) {saves(perfect)}</li>")
    return f"<ul>{''.join(out)}</ul>"


def _against_random(prune: Mapping[str, Any], name: str) -> str:
    """The sentence on random pruning at `name`'s budget: the paired accuracy gain, and whether it clears 0."""
    rand = next((m["name"] for m in prune["methods"] if m["kind"] == "random" and m["settings"].get("match") == name),
                None)
    row = prune["summary"].get(rand, {}) if rand else {}
    if MATCHED_MINUS_RANDOM not in row:
        return ""
    gain, lo, hi = (row[MATCHED_MINUS_RANDOM + s] for s in ("", "_lo", "_hi"))
    verdict = "beats it" if lo > 0 else "loses to it" if hi < 0 else "does not beat it"
    return (f" Against random pruning at the same budget (<code>{html.escape(rand)}</code>, paired by draw) it gains "
            f"{gain:+.1f} points [{lo:+.1f}, {hi:+.1f}]: it {verdict} beyond the 95% interval.")


def _online_table(res: CorpusResults) -> str:
    """Real generation stopped early: one row per method, figures summed over the problems."""
    assert res.online is not None
    metrics, meta = res.online["metrics"], res.online["meta"]
    methods = list(dict.fromkeys(k.split("/")[1] for k in metrics if k.startswith("online/")))
    reasons = ("finished", "pruned", "confidence_stop", "length")
    head = ("<tr><th>method</th><th>tokens</th><th>token reduction</th><th>accuracy</th><th>sequential depth</th>"
            + "".join(f"<th>{r}</th>" for r in reasons) + "</tr>")
    num = lambda v, spec: "n/a" if v is None else format(v, spec)
    order = lambda m: (0 if m == "cons" else 1 if m.startswith("deepprune") else 2, m)
    rows = []
    for m in sorted(methods, key=order):
        get = lambda key: metrics.get(f"online/{m}/{key}")
        rows.append(f"<tr><td>{html.escape(m)}</td><td>{num(get('tokens'), ',.0f')}</td>"
                    f"<td>{_fmt(get('token_reduction'), True)}</td><td>{_fmt(get('accuracy'), True)}</td>"
                    f"<td>{num(get('sequential_depth'), ',.0f')}</td>"
                    + "".join(f"<td>{num(get(f'stopped_{r}'), '.0f')}</td>" for r in reasons) + "</tr>")
    engine = meta.get("engine", {})
    what = (f"<p>{len(meta.get('problems', []))} problems x N = {meta.get('n')}, at most {meta.get('max_tokens')} tokens "
            f"per trace, judge after k = {meta.get('k')} tokens ({html.escape(str(meta.get('judge', {}).get('variant')))} "
            f"of corpus {html.escape(str(meta.get('judge', {}).get('corpus')))}); engine "
            f"<code>{html.escape(str(engine.get('engine')))}</code> <code>{html.escape(str(engine.get('model')))}</code>"
            f" on {html.escape(str(engine.get('device')))}. Columns after accuracy count traces by why they stopped.</p>")
    return what + f"<table>{head}{''.join(rows)}</table>"


def render_index(params: Params, results: Mapping[str, CorpusResults], figures: Mapping[str, go.Figure],
                 transfer: Mapping[str, Any] | None = None) -> str:
    """The whole report page: tables, embedded figures, plotly.js inlined once (opens offline)."""
    def embed(name: str) -> str:
        return (f"<div class='fig'>{figures[name].to_html(include_plotlyjs=False, full_html=False, div_id=f'fig-{name}')}"
                f"<p class='link'><a href='figures/{name}.html'>open {name} alone</a></p></div>")

    def unit(corpus: str) -> str:
        t = params.truncation(corpus)
        return f"{t.k} {'tokens' if t.strategy == 'tokens' else 'reasoning words'}"

    sees = ", ".join(f"{unit(c)} ({html.escape(c)})" for c in results)
    sections = [
        "<h2>1. Inter-trace redundancy</h2>",
        "<p>Share of within-problem trace pairs whose final answers are equivalent (one equivalence function for "
        "labels, votes and grading). The paper's bars (grey) are its Figure 2(a), on long reasoning models.</p>",
        _redundancy_table(results), embed("redundancy"),
        "<h2>2. Judges on held-out problems</h2>",
        f"<p>Every judge sees the first {sees} of each trace. Splits are grouped by problem ({params.label.folds}-fold); figures are the mean, sample "
        "standard deviation and range over folds, and the AUROC of all out-of-fold scores pooled. Trained judges' "
        "scores are calibrated (Platt scaling fitted on the training folds only), so a score is P(same answer) and "
        "DeepPrune's tau a probability; the reliability diagram shows how well, beside the uncalibrated head. The "
        "paper's "
        "numbers come from Qwen3-4B judges on long traces of other models (Table 1) and are shown for orientation, "
        "not as a like-for-like comparison. <i>AUROC within a problem</i> ranks each problem's pairs among "
        "themselves and averages over the problems that have pairs of both kinds: DeepPrune's clustering only ever "
        "compares traces of one problem, so this, not the pooled AUROC (which also rewards telling consistent "
        "problems from inconsistent ones), bounds how well it can prune.</p>",
    ]
    for corpus, res in results.items():
        sections += [f"<h3>{html.escape(corpus)}</h3>", _judge_table(params, corpus, res),
                     embed(f"roc_{corpus}"), embed(f"scores_{corpus}")]
        if f"reliability_{corpus}" in figures:
            sections.append(embed(f"reliability_{corpus}"))
    sections += ["<h2>3. All variants side by side</h2>", embed("judge_comparison")]
    if transfer is not None:
        sections += ["<h3>Transfer across corpora (the revised paper's headline protocol)</h3>",
                     _transfer_tables(params, transfer)]
    if any(r.prune is not None for r in results.values()):
        paper = "".join(f"<tr><td>{html.escape(k)}</td><td class='theirs'>{html.escape(v)}</td></tr>"
                        for k, v in PAPER_ONLINE.items())
        sections += [
            "<h2>4. Online pruning, replayed on held-out problems</h2>",
            "<p>The pruning controller of the online stage, driving a replay engine over the recorded traces. "
            "Every method sees the same seeded draws of N traces in arrival order. A trace stopped after its "
            "prefix costs min(length, k) tokens (a prefix of the first k reasoning words: the tokens the trace had "
            "written when that prefix was complete, measured per trace), a completed trace its full length, and a "
            "trace that ends within its prefix has completed and votes; DeepPrune's judge scores are "
            "out-of-fold (the judge never saw the problem). Intervals are 2.5th to 97.5th percentiles over the "
            "draws. Judge calls count the pairs greedy clustering scored. Sequential depth is the latency: the "
            "longest chain of tokens a problem generates one after another, every trace of a round decoded in "
            "parallel (cons@N: its longest trace; DeepPrune: the prefix round, then the longest tail; ESC: one "
            "whole round per window). <code>settle</code> is ours, not the paper's: DeepPrune over arriving "
            "windows that stops starting traces once a window seeds no new cluster. DeepConf "
            "needs per-token logprobs, which the recorded corpora do not carry (the live corpus does).</p>",
            _prune_verdicts(results), _leaderboard(results),
            *[embed(f"pareto_{c}") for c, r in results.items() if r.prune is not None],
            f"<h3>The paper's online results (theirs, on long traces at N = 512)</h3>"
            f"<table><tr><th>result</th><th class='theirs'>paper</th></tr>{paper}</table>"]
    if any(r.judge_lm is not None for r in results.values()):
        sections += ["<h2>5. The causal-LM judge, fine-tuned and zero-shot</h2>",
                     "<p>The paper's judge design: a causal LM reads both prefixes and answers yes or no; the score is "
                     "P(yes) over the two label tokens, and fine-tuning puts the focal loss on that label token. "
                     "Evaluated on a balanced sample of held-out pairs per fold (AUROC and TNR do not depend on the "
                     "class ratio); the other rows are the judge stage's out-of-fold scores on exactly those pairs.</p>"]
        for corpus, res in results.items():
            if res.judge_lm is not None:
                sections += [f"<h3>{html.escape(corpus)}</h3>", _judge_lm_table(params, res)]
    if any(r.sweep is not None for r in results.values()):
        sections += ["<h2>6. Focal-loss sweep</h2>"]
        for corpus, res in results.items():
            if res.sweep is not None:
                sections += [f"<h3>{html.escape(corpus)}</h3>", _sweep_table(params, res)]
    if any(r.ablate is not None for r in results.values()):
        sections += ["<h2>7. Truncation ablation (Figure 4) and training variants (Table 1)</h2>",
                     "<p>Every variant cross-validated on every prefix the label stage built: same pairs, same folds, "
                     "only the truncation changes. The paper's grids are {300, 500, 700} tokens and {15, 25, 35} "
                     "reasoning words on traces of thousands of tokens; ours are scaled to the shipped traces. "
                     "A prefix is only worth its AUROC online if it is complete before the trace ends: the table under "
                     "each corpus says on what share of traces it is, and after how many tokens (the label stage's "
                     "measurement; a prefix of k reasoning words needs the sentence of the k-th one). The dotted line is the "
                     "chosen judge's AUROC within a problem (section 2): where it stays near 0.5 while the AUROC over "
                     "folds is high, the prefix tells consistent problems apart, not the traces of one problem.</p>"]
        for corpus, res in results.items():
            if res.ablate is not None:
                sections += [f"<h3>{html.escape(corpus)}</h3>", _table1(params, res), _prefix_costs(params, corpus, res),
                             embed(f"truncation_{corpus}")]
    if any(r.online is not None for r in results.values()):
        sections += ["<h2>8. Online pruning with real generation</h2>",
                     "<p>The sample stage's engine generates; the pruning controller (the prune stage's, there over "
                     "a replay engine) stops its traces for real. cons@N, "
                     "DeepPrune online (every trace writes k tokens, the judge clusters the prefixes, cluster seeds "
                     "and q members of the largest cluster go on, the rest are never generated further) and DeepConf "
                     "online (warm-up traces set a confidence threshold; later traces stop when their sliding-window "
                     "confidence falls below it) run on the same problems with the same trace seeds. Tokens are the "
                     "engine's count. Wall time on a batched engine follows the longest trace still running in a "
                     "batch, so fewer tokens shorten it only when the engine is busy with more work than one batch "
                     "(a server under load), not when N traces fill one batch.</p>"]
        for corpus, res in results.items():
            if res.online is not None:
                sections += [f"<h3>{html.escape(corpus)}</h3>", _online_table(res)]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;display:block;overflow-x:auto;max-width:100%}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child{text-align:left}.theirs{color:#666;background:#f4f4f4}.link{font-size:small}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(params.report.title)}</title>"
            f"<style>{style}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(params.report.title)}</h1><p>Corpora: {', '.join(map(html.escape, results))}. "
            f"Seed {params.seed}. The page is a function of the inputs (code, data, params): two runs write the "
            f"same bytes. The commit of each run is a tag of its MLflow run; wall times, tokens/s and judge seconds "
            f"are measurements of one run on one machine, in <code>reports/timings.md</code> after "
            f"<code>make run</code>.</p>"
            + "".join(sections) + "</body></html>")
