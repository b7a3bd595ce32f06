"""``li2 report RESULTS...``: figures and a summary from sweep results (JSON lines).

Renders, for whatever the results contain:

- ``fig5_boundary.png``: final test accuracy against train fraction per group, and the phase
  diagram (M, p) with the fitted p* = c·ln M / M (the Fig. 5 analogue);
- ``grok_vs_wd.png``: epochs to test accuracy 0.5 / 0.99 against weight decay;
- ``grok_vs_lr.png``: final test accuracy and mean normalized energy against learning rate (Fig. 7);
- ``muon_vs_adam.png`` and ``zero_init.png`` when both variants are present (Figs. 8, 14-16);

and writes ``summary.json`` plus a Markdown summary to stdout. With ``--wandb`` the figures are
also logged to a W&B run (offline unless W&B is configured).

The boundary of a group is the train fraction at which the share of seeds that generalize (final
test accuracy ≥ ``--success``, default 0.9) first crosses 1/2, linearly interpolated between the
swept fractions. c is the least-squares fit of p_b = c·ln M / M over the cyclic groups; a power law
p_b = a·M^(−b) is fitted beside it to say how well ln M / M describes the data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

from li2_lightning.data import P_STAR_C, critical_fraction
from li2_lightning.wandb_mode import choose_wandb_mode

SUCCESS_ACC = 0.9


def load_results(paths: list[str | os.PathLike]) -> list[dict]:
    """Rows of one or more JSONL results files (a later duplicate id wins).

    A line that is not JSON (a line torn by a killed writer) is skipped with a warning naming it.

    Raises:
        ValueError: naming the file and line of JSON that is not a result row (a mapping with
            ``id``, ``group`` and ``M``), or a missing file.
    """
    rows: dict[str, dict] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"results file '{path}' does not exist")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ValueError(f"results file '{path}' is not a text file; accepted: JSON lines written by `li2 sweep`") from None
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                print(f"li2 report: {path}:{i}: not JSON (a torn line?), skipped", file=sys.stderr)
                continue
            if not isinstance(row, dict) or not all(k in row for k in ROW_KEYS):
                raise ValueError(f"{path}:{i}: not a result row of `li2 sweep` (a JSON object with keys "
                                 f"{list(ROW_KEYS)}); got {line[:80]!r}")
            rows[row["id"]] = row
    return list(rows.values())


ROW_KEYS = ("id", "group", "M")
#: point settings that never separate a boundary: the train size (the boundary's axis) and seeds
_NOT_SETTINGS = ("train_fraction", "n_train", "p_star_multiplier", "seed", "split_seed", "group")


def varying_settings(rows: list[dict]) -> list[str]:
    """Point settings (other than group, train size and seeds) that take more than one value in ``rows``."""
    keys = sorted({k for r in rows for k in (r.get("point") or {}) if k not in _NOT_SETTINGS})
    return [k for k in keys if len({json.dumps((r.get("point") or {}).get(k), default=str) for r in rows}) > 1]


def setting_label(row: dict, keys: list[str]) -> str:
    """``"weight_decay=0.001, lr=0.01"`` for the varying settings ``keys`` of a row ('' if none)."""
    point = row.get("point") or {}
    return ", ".join(f"{k}={point.get(k)}" for k in keys)


def usable(rows: list[dict]) -> tuple[list[dict], int]:
    """Rows whose member did not diverge, and how many diverged (kept out of fits and tables)."""
    kept = [r for r in rows if not r.get("diverged")]
    return kept, len(rows) - len(kept)


def _is_cyclic(name: str) -> bool:
    name = name.split(" [")[0].upper()  # "Z23 [weight_decay=0.001]": the group part
    return name.startswith("Z") and "X" not in name


def boundary(points: list[tuple[float, float]]) -> Optional[float]:
    """Train fraction where the success share first crosses 1/2 going up, from (p, share) pairs.

    None if the share never reaches 1/2; the smallest p if it starts at or above 1/2.
    """
    points = sorted(points)
    if not points or max(s for _, s in points) < 0.5:
        return None
    if points[0][1] >= 0.5:
        return points[0][0]
    for (p0, s0), (p1, s1) in zip(points, points[1:]):
        if s0 < 0.5 <= s1:
            return p0 + (0.5 - s0) * (p1 - p0) / (s1 - s0)
    return None


def fit_c(Ms: list[int], ps: list[float]) -> tuple[float, float]:
    """Least squares c of p = c·ln M / M through the origin, and its R² (about the mean)."""
    L = [math.log(M) / M for M in Ms]
    c = sum(p * l for p, l in zip(ps, L)) / sum(l * l for l in L)
    return c, _r2(ps, [c * l for l in L])


def fit_power(Ms: list[int], ps: list[float]) -> tuple[float, float, float]:
    """p = a·M^(−b) by least squares in log-log; returns a, b, R² (in p)."""
    x = [math.log(M) for M in Ms]
    y = [math.log(p) for p in ps]
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    slope = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y)) / sxx if sxx else 0.0
    a = math.exp(my - slope * mx)
    return a, -slope, _r2(ps, [a * M**slope for M in Ms])


def _r2(y: list[float], fit: list[float]) -> float:
    m = sum(y) / len(y)
    ss_tot = sum((v - m) ** 2 for v in y)
    ss_res = sum((v - f) ** 2 for v, f in zip(y, fit))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def scaling_summary(rows: list[dict], success: float = SUCCESS_ACC) -> dict:
    """Per group and setting: M, the success share per train fraction, the boundary p_b; and the fits.

    Rows are split by every point setting that varies among them (:func:`varying_settings`), so a
    weight-decay sweep gives one boundary per (group, weight decay); c is fitted per setting over
    the cyclic groups. Diverged rows are left out.
    """
    rows, _ = usable(rows)
    keys = varying_settings(rows)
    by_group: dict[str, dict[float, list[bool]]] = defaultdict(lambda: defaultdict(list))
    M_of: dict[str, int] = {}
    label_of: dict[str, tuple[str, str]] = {}
    for r in rows:
        if r.get("final_test_acc") is None:
            continue
        label = setting_label(r, keys)
        g = r["group"] if not label else f"{r['group']} [{label}]"
        by_group[g][round(r["train_fraction"], 6)].append(r["final_test_acc"] >= success)
        M_of[g] = r["M"]
        label_of[g] = (r["group"], label)
    groups = {}
    for g, fr in by_group.items():
        shares = sorted((p, sum(v) / len(v)) for p, v in fr.items())
        pb = boundary(shares)
        groups[g] = {"M": M_of[g], "shares": shares, "seeds": min(len(v) for v in fr.values()),
                     "setting": label_of[g][1], "boundary": pb,
                     "boundary_over_pstar": None if pb is None else pb / critical_fraction(M_of[g]),
                     "c_alone": None if pb is None else pb * M_of[g] / math.log(M_of[g])}
    out: dict = {"groups": groups, "success_acc": success, "settings": keys, "fits": {}}
    for label in sorted({v["setting"] for v in groups.values()}):
        cyc = [(v["M"], v["boundary"]) for g, v in groups.items()
               if v["setting"] == label and _is_cyclic(label_of[g][0]) and v["boundary"]]
        if len(cyc) >= 2:
            Ms, ps = zip(*cyc)
            c, r2 = fit_c(list(Ms), list(ps))
            a, b, r2p = fit_power(list(Ms), list(ps))
            out["fits"][label] = {"c": c, "r2": r2, "power_a": a, "power_b": b, "power_r2": r2p, "n_groups": len(cyc)}
    if out["fits"]:
        out["fit"] = next(iter(out["fits"].values()))
    return out


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def plot_scaling(rows: list[dict], summary: dict, out: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summary["groups"]
    if not groups:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    acc = defaultdict(lambda: defaultdict(list))
    keys = summary.get("settings", [])
    for r in usable(rows)[0]:
        if r.get("final_test_acc") is not None:
            label = setting_label(r, keys)
            acc[r["group"] if not label else f"{r['group']} [{label}]"][r["train_fraction"]].append(r["final_test_acc"])
    same_M: dict[int, int] = defaultdict(int)  # groups of one order drawn side by side, not on top
    for g in sorted(groups, key=lambda g: (not _is_cyclic(g), groups[g]["M"], g)):
        ps = sorted(acc[g])
        shift = 0.6 * same_M[groups[g]["M"]]
        same_M[groups[g]["M"]] += 1
        style = "-o" if _is_cyclic(g) else "--s"
        ax1.plot(ps, [_mean(acc[g][p]) for p in ps], style, ms=4, label=f"{g} (M={groups[g]['M']})")
        Ms = [groups[g]["M"] + shift] * len(ps)
        shares = dict(groups[g]["shares"])
        ax2.scatter(Ms, ps, c=[shares[round(p, 6)] for p in ps], cmap="RdYlGn", vmin=0, vmax=1,
                    marker="o" if _is_cyclic(g) else ("s" if all(c in "Zz0123456789xX" for c in g.split(" [")[0]) else "^"),
                    s=40, edgecolors="k", linewidths=0.3)
        if groups[g]["boundary"]:
            ax2.plot([groups[g]["M"] + shift], [groups[g]["boundary"]], "k_", ms=14, mew=2)
    ax1.set_xscale("log")
    ax1.set_xlabel("train fraction p")
    ax1.set_ylabel("final test accuracy (mean over seeds)")
    ax1.legend(fontsize=7)
    ax1.set_title("test accuracy against train fraction")
    Ms_all = sorted({v["M"] for v in groups.values()})
    grid = [Ms_all[0] + i * (Ms_all[-1] - Ms_all[0]) / 100 for i in range(101)]
    ax2.plot(grid, [critical_fraction(m) for m in grid], ":", c="gray", label=f"author's c = {P_STAR_C}")
    if "fit" in summary:
        c = summary["fit"]["c"]
        ax2.plot(grid, [critical_fraction(m, c) for m in grid], "b-",
                 label=f"fit c = {c:.2f} (R² {summary['fit']['r2']:.2f}, cyclic groups)")
    ax2.set_yscale("log")
    ax2.set_xlabel("group order M")
    ax2.set_ylabel("train fraction p")
    ax2.set_title(f"share of seeds with test acc ≥ {summary['success_acc']} (−: boundary)\n"
                  "o cyclic, s abelian product, ^ other", fontsize=10)
    ax2.legend(fontsize=7)
    fig.colorbar(ax2.collections[0], ax=ax2, label="share generalized")
    fig.tight_layout()
    path = out / "fig5_boundary.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grok_by(rows: list[dict], key: str) -> dict:
    """For each (group, value of ``key``): seeds, mean epochs to test acc 0.5 / 0.99 (None: never in any seed)."""
    table: dict = defaultdict(lambda: {"t05": [], "t99": [], "acc": [], "energy": []})
    for r in rows:
        value = r.get(key)
        if key == "optimizer" and r.get("muon_lr") is not None:
            value = f"muon (W lr {r['muon_lr']:g})"  # Muon's step size is the variable that matters
        k = (r["group"], value)
        table[k]["t05"].append(r.get("epochs_to_test_acc_0.5"))
        table[k]["t99"].append(r.get("epochs_to_test_acc_0.99"))
        table[k]["acc"].append(r.get("final_test_acc"))
        table[k]["energy"].append(r.get("energy_mean"))
    out = {}
    for k, v in table.items():
        def stat(xs):
            hit = [x for x in xs if x is not None]
            return {"mean": _mean(hit) if hit else None, "hit": len(hit), "n": len(xs), "values": xs}
        out[k] = {"t05": stat(v["t05"]), "t99": stat(v["t99"]), "acc": stat(v["acc"]), "energy": stat(v["energy"])}
    return out


def _order(v) -> tuple:
    """Sort key that puts numbers in numeric order and other values after them."""
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _varies(rows: list[dict], key: str) -> bool:
    return len({r.get(key) for r in rows}) > 1


def plot_vs(rows: list[dict], key: str, out: Path, fname: str, title: str) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = grok_by(rows, key)
    groups = sorted({g for g, _ in stats})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cap = max((r.get("epochs") or 0) for r in rows)
    for g in groups:
        xs = sorted((v for gg, v in stats if gg == g), key=_order)
        for which, style in (("t05", "-o"), ("t99", "--s")):
            ys = [stats[(g, x)][which]["mean"] for x in xs]
            pos = list(range(len(xs)))
            ax.plot(pos, [cap * 1.05 if y is None else y for y in ys], style, ms=5,
                    label=f"{g}: epochs to test acc {'0.5' if which == 't05' else '0.99'}")
            for p, y in zip(pos, ys):
                if y is None:
                    ax.annotate("never", (p, cap * 1.05), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xs],
                      rotation=15 if any(isinstance(x, str) for x in xs) else 0, fontsize=8)
    ax.set_xlabel(key)
    ax.set_ylabel("epochs (mean over seeds that got there)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / fname
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(rows: list[dict], out: Path) -> Optional[Path]:
    """``curves.png``: per-point train and test accuracy against epoch, one panel per group."""
    with_curves = [r for r in rows if (r.get("curves") or {}).get("val/acc")]
    if not with_curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["group"] for r in with_curves}, key=lambda g: (not _is_cyclic(g), g))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, g in zip(axes[0], names):
        for r in (r for r in with_curves if r["group"] == g):
            for key, style in (("train/acc", ":"), ("val/acc", "-")):
                ys = [float("nan") if y is None else y for y in r["curves"].get(key, [])]
                ax.plot(range(len(ys)), ys, style, lw=0.8, alpha=0.6, c="C1" if key == "train/acc" else "C0")
        ax.set_title(f"{g}: test (—) and train (⋯) accuracy", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(summary: dict, by: dict[str, dict]) -> str:
    lines = []
    groups = summary["groups"]
    if groups:
        lines += ["| group | M | seeds | boundary p_b | p_b / p* | c alone |", "|---|---|---|---|---|---|"]
        for g, v in sorted(groups.items(), key=lambda kv: (not _is_cyclic(kv[0]), kv[1]["M"])):
            pb = v["boundary"]
            cells = ["–", "–", "–"] if pb is None else [f"{pb:.3f}", f"{v['boundary_over_pstar']:.2f}",
                                                          f"{v['c_alone']:.2f}"]
            lines.append(f"| {g} | {v['M']} | {v['seeds']} | " + " | ".join(cells) + " |")
        for label, f in summary.get("fits", {}).items():
            lines += ["", f"Fitted over {f['n_groups']} cyclic groups{' at ' + label if label else ''}: "
                          f"p_b = {f['c']:.3f} · ln M / M (R² {f['r2']:.3f}); power law p_b = "
                          f"{f['power_a']:.2f} · M^-{f['power_b']:.2f} (R² {f['power_r2']:.3f}).", ""]
    for key, stats in by.items():
        lines += [f"| group | {key} | seeds | epochs to test acc 0.5 | epochs to 0.99 | final test acc |",
                  "|---|---|---|---|---|---|"]
        for (g, v), s in sorted(stats.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
            def fmt(st):
                vals = ", ".join("never" if x is None else f"{x}" for x in st["values"])
                return vals
            accs = [a for a in s["acc"]["values"] if a is not None]
            lines.append(f"| {g} | {v} | {s['t05']['n']} | {fmt(s['t05'])} | {fmt(s['t99'])} | "
                         f"{', '.join(f'{a:.3f}' for a in accs)} |")
        lines.append("")
    return "\n".join(lines)


def report(paths: list[str], out: str | os.PathLike, success: float = SUCCESS_ACC, use_wandb: bool = False) -> dict:
    """Render every figure the results support into ``out``; return the summary."""
    rows = load_results(paths)
    if not rows:
        raise ValueError(f"no result rows in {paths}")
    rows, diverged = usable(rows)
    if diverged:
        print(f"li2 report: {diverged} diverged member(s) (non-finite loss or parameters) left out of fits and tables",
              file=sys.stderr)
    if not rows:
        raise ValueError(f"every row in {paths} diverged; nothing to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    summary = {"n_rows": len(rows)}
    by_group: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    fig5_rows = [r for g, rs in by_group.items() if _varies(rs, "train_fraction") for r in rs]
    if fig5_rows:
        summary["scaling"] = scaling_summary(fig5_rows, success)
        figures.append(plot_scaling(fig5_rows, summary["scaling"], out))
    by = {}
    for key, fname, title in (("weight_decay", "grok_vs_wd.png", "epochs to grok against weight decay"),
                              ("lr", "grok_vs_lr.png", "epochs to grok against learning rate (Fig. 7)"),
                              ("optimizer", "muon_vs_adam.png", "Muon against Adam (Fig. 8)"),
                              ("V_init_scale", "zero_init.png", "zero-init V (0) against default (Figs. 14-16)")):
        # a group enters when this setting varies in it at a fixed train fraction
        sel = [r for rs in by_group.values() if _varies(rs, key) and not _varies(rs, "train_fraction") for r in rs]
        if sel:
            by[key] = grok_by(sel, key)
            figures.append(plot_vs(sel, key, out, fname, title))
    curves = plot_curves(rows, out)
    if curves:
        figures.append(curves)
    summary["diverged"] = diverged
    summary["by"] = {k: {f"{g}|{v}": s for (g, v), s in st.items()} for k, st in by.items()}
    summary["figures"] = [str(f) for f in figures if f]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(markdown(summary.get("scaling", {"groups": {}}), by))
    if use_wandb:
        _log_wandb(summary["figures"], out)
    return summary


def _log_wandb(figures: list[str], out: Path) -> None:
    """Log the figures as images to a W&B run written under ``out`` (offline unless W&B is set up)."""
    try:
        import wandb
    except ImportError:
        print("li2 report: --wandb needs `pip install wandb`; figures were written only to disk", file=sys.stderr)
        return
    choose_wandb_mode()  # offline when there is no key or no network, as `li2 fit` does
    run = wandb.init(project="li2", job_type="li2-report", dir=str(out))
    run.log({Path(f).stem: wandb.Image(f) for f in figures})
    run.finish()


def main(argv: Optional[list[str]] = None) -> None:
    """``li2 report RESULTS.jsonl [MORE.jsonl ...] [--out DIR] [--success ACC] [--wandb]``."""
    parser = argparse.ArgumentParser(prog="li2 report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results JSONL files written by `li2 sweep`")
    parser.add_argument("--out", help="figure folder (default: beside the first results file, <stem>_report)")
    parser.add_argument("--success", type=float, default=SUCCESS_ACC, help="final test acc that counts as generalized")
    parser.add_argument("--wandb", action="store_true", help="also log the figures to a W&B run")
    args = parser.parse_args(argv)
    first = Path(args.results[0])
    out = args.out or first.with_name(first.stem + "_report")
    try:
        report(args.results, out, args.success, args.wandb)
    except ValueError as err:
        parser.exit(2, f"li2 report: error: {err}\n")
