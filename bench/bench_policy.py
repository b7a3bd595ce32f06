"""Issue 13: a Fig. 5-style sweep with the member-stopping policy off and on, and the stalled calls on
the Fig. 3 weight-decay-0 seeds.

    python bench/bench_policy.py sweep --mode off --out /tmp/h10   # full curves, static populations
    python bench/bench_policy.py sweep --mode on --out /tmp/h10    # stop-done-and-stalled + refill
    python bench/bench_policy.py fig3 --out /tmp/h10               # Z71, K 2048, n 2016, wd 0, 3 seeds
    python bench/bench_policy.py report --out /tmp/h10             # results/issue13_policy.md + JSONL

``off`` trains the points as the sweep engine does today (populations of ``--population`` members,
every member its whole budget); ``on`` trains them with
:func:`li2_lightning.population_policy.run_points` (a member stops when the stage rule calls it
done, or stalled at ``confirm`` consecutive checks, and the next point takes its slot). Both run
single-threaded (the machine is shared); wall time and member-epochs are reported as ratios.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["Z23", "Z31", "Z41", "D11", "S4"]
MULTIPLIERS = [0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]
WEIGHT_DECAYS = [0.0, 1e-3]
SEEDS = [0, 1, 2]
FIXED = {"K": 128, "optimizer": "adam", "lr": 1e-3, "max_epochs": 1000, "eval_every": 20}
POLICY = {"mode": "stop-done-and-stalled", "check_every": 10, "confirm": 3}
GENERALIZES = 0.95


def points() -> list[dict]:
    """The sweep: groups × p* multipliers × weight decays × seeds, over FIXED."""
    return [dict(FIXED, group=g, p_star_multiplier=m, weight_decay=wd, seed=s)
            for g in GROUPS for m in MULTIPLIERS for wd in WEIGHT_DECAYS for s in SEEDS]


def _quiet() -> None:
    import logging

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


def _keep(row: dict, point: dict) -> dict:
    keep = {k: v for k, v in row.items() if k not in ("curves", "point")}
    keep.update(group=point["group"], p_star_multiplier=point["p_star_multiplier"], seed=point["seed"],
                weight_decay=point["weight_decay"])
    return keep


def run_sweep(mode: str, out: Path, population: int) -> None:
    from li2_lightning import sweep
    from li2_lightning.population import MemberSettings, OptimizerSpec, PopulationModule, train_population
    from li2_lightning.population_policy import run_points

    _quiet()
    pts = points()
    rows_path = out / f"sweep_{mode}.jsonl"
    rows_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    member_epochs = 0
    for key, members in sweep.groups(pts).items():
        tg = time.perf_counter()
        if mode == "off":
            for i in range(0, len(members), population):
                chunk = members[i: i + population]
                pop = PopulationModule(chunk[0]["group"], FIXED["K"], optimizer=OptimizerSpec("adam"),
                                       eval_every=FIXED["eval_every"], analyze=False,
                                       members=[MemberSettings(seed=p["seed"], p_star_multiplier=p["p_star_multiplier"],
                                                               lr=p["lr"], weight_decay=p["weight_decay"])
                                                for p in chunk])
                rows = train_population(pop, FIXED["max_epochs"], accelerator="cpu")
                member_epochs += pop.member_epochs
                with rows_path.open("a") as f:
                    for p, r in zip(chunk, rows):
                        f.write(json.dumps(_keep(r, p)) + "\n")
        elif mode == "observe":  # every member its budget, every observation recorded (for replay)
            def keep_obs(row, point):
                with rows_path.open("a") as f:
                    f.write(json.dumps(dict(_keep(row, point), val_acc=row["curves"]["val/acc"])) + "\n")

            rows = run_points(members, dict(POLICY, mode="off", record_observations=True), population,
                              sink=keep_obs, accelerator="cpu")
            member_epochs += sum(r["epochs"] for r in rows)
        else:
            done = []

            def sink(row, point):
                done.append(1)
                with rows_path.open("a") as f:
                    f.write(json.dumps(_keep(row, point)) + "\n")

            rows = run_points(members, POLICY, population, sink=sink, accelerator="cpu")
            member_epochs += sum(r["epochs"] for r in rows)
        print(f"{members[0]['group']}: {len(members)} points in {time.perf_counter() - tg:.1f} s", flush=True)
    wall = time.perf_counter() - t0
    (out / f"sweep_{mode}_summary.json").write_text(json.dumps(
        {"mode": mode, "points": len(pts), "population": population, "wall_s": round(wall, 1),
         "member_epochs": member_epochs, "policy": POLICY if mode != "off" else None, "fixed": FIXED}, indent=1))
    print(f"{mode}: {len(pts)} points, {wall:.0f} s, {member_epochs} member-epochs", flush=True)


def run_fig3(out: Path) -> None:
    from li2_lightning.population import OptimizerSpec, PopulationModule, make_members, train_population
    from li2_lightning.population_policy import StopPolicy

    _quiet()
    res = {}
    for mode in ("off", "stop-done-and-stalled"):
        t0 = time.perf_counter()
        pop = PopulationModule("Z71", 2048, members=make_members([0, 1, 2], n_train=2016, lr=1e-3, weight_decay=0.0),
                               optimizer=OptimizerSpec("adam"), analyze=False, eval_every=1,
                               policy=StopPolicy(mode, check_every=10, confirm=3))
        rows = train_population(pop, 300, accelerator="cpu")
        res[mode] = {"wall_s": round(time.perf_counter() - t0, 1), "member_epochs": pop.member_epochs,
                     "rows": [{k: v for k, v in r.items() if k != "curves"} for r in rows]}
        print(mode, [(r["seed"], r["stop_reason"], r["stop_epoch"], r["stage_transitions"], r["final_test_acc"])
                     for r in rows], flush=True)
    (out / "fig3_wd0.json").write_text(json.dumps(res, indent=1))


def replay(observations: list[dict], confirm: int, val_flat_stall: bool = False) -> tuple[str, int, Optional[float]]:
    """The policy's decision on recorded observations: (stop reason, stop epoch, test acc at the
    stop), or ("budget", -1, None).

    ``val_flat_stall``: the variant proposed for the a_G signal's rule 2, which calls a run stalled
    only while its test accuracy is also flat over the window (Δ below generalization_gain × (1 −
    chance) / 10, as the feature signals already require).
    """
    from li2_lightning.stages import Memory, Observation, Stage, Thresholds, next_stage

    th, stage, mem, run = Thresholds(), Stage.LAZY, Memory(), 0
    for o in observations:
        obs = Observation(**o)
        new, new_mem = next_stage(stage, obs, mem, th)
        dval = new_mem.delta_val_acc
        if (val_flat_stall and new is Stage.STALLED and stage is not Stage.STALLED and dval is not None
                and dval >= th.generalization_gain * (1 - obs.chance) / 10):
            new, new_mem = stage, Memory(new_mem.peak_a_G, mem.resume, new_mem.purity_history, new_mem.delta_purity,
                                         new_mem.val_history, new_mem.delta_val_acc)
        stage, mem = new, new_mem
        run = run + 1 if stage is Stage.STALLED else 0
        if stage is Stage.DONE:  # the check at epoch e reads test acc at θ_{e+1}, where the member stops
            return "done", obs.epoch + 1, obs.val_acc
        if run >= confirm:
            return "stalled", obs.epoch + 1, obs.val_acc
    return "budget", -1, None


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(out: Path) -> str:
    """results/issue13_policy.md from the runs in ``out`` (and the JSONL copied under results/)."""
    off = {(r["group"], r["p_star_multiplier"], r["weight_decay"], r["seed"]): r for r in _read(out / "sweep_off.jsonl")}
    on = {(r["group"], r["p_star_multiplier"], r["weight_decay"], r["seed"]): r for r in _read(out / "sweep_on.jsonl")}
    s_off = json.loads((out / "sweep_off_summary.json").read_text())
    s_on = json.loads((out / "sweep_on_summary.json").read_text())
    both = sorted(set(off) & set(on))
    # a point whose train fraction reaches 1 (3 p* on the smallest groups) has no test set: no call
    no_test = [k for k in both if off[k].get("n_train") == off[k].get("M") ** 2]
    keys = [k for k in both if k not in no_test]

    reasons: dict[str, int] = {}
    for k in both:
        reasons[on[k]["stop_reason"]] = reasons.get(on[k]["stop_reason"], 0) + 1

    def call(r: dict) -> bool:
        acc = r.get("final_test_acc")
        return acc is not None and acc >= GENERALIZES

    agree = sum(call(off[k]) == call(on[k]) for k in keys)
    stalled_grokked = [k for k in keys if call(off[k]) and on[k].get("stop_reason") == "stalled"]
    wrong = [k for k in stalled_grokked if not call(on[k])]
    disagree = [k for k in keys if call(off[k]) != call(on[k])]
    lines = [
        "# Issue 13: stopping members that grokked or stalled, and refilling their slots",
        "",
        "Reproduce: `python bench/bench_policy.py sweep --mode off --out DIR`, then `--mode on`, `fig3`, and",
        "`report` (this file and `results/issue13_policy_*.jsonl`). One process at a time, one torch thread,",
        "`nice -n 5` on the shared 2-core machine (3-4 other engineers' jobs ran beside it: wall times are",
        "noisy, member-epochs are not).",
        "",
        "## Fig. 5-style sweep, policy off vs on",
        "",
        f"Points: groups {GROUPS} × p* multipliers {MULTIPLIERS} × weight decay {WEIGHT_DECAYS} × seeds {SEEDS}"
        f" = {len(both)} (K {FIXED['K']}, Adam lr {FIXED['lr']}, budget {FIXED['max_epochs']} epochs).",
        f"Policy on: `{json.dumps(POLICY)}` (stage rule thresholds at their defaults), populations of"
        f" {s_on['population']} with refill; off: populations of {s_off['population']}, every member its budget.",
        "",
        "| | off | on | off / on |",
        "|---|---|---|---|",
        f"| wall time (s) | {s_off['wall_s']} | {s_on['wall_s']} | {s_off['wall_s'] / s_on['wall_s']:.2f} |",
        f"| member-epochs | {s_off['member_epochs']} | {s_on['member_epochs']} |"
        f" {s_off['member_epochs'] / max(1, s_on['member_epochs']):.2f} |",
    ]
    run2 = out / "run2"
    if (run2 / "sweep_off_summary.json").exists() and (run2 / "sweep_on_summary.json").exists():
        r_off = json.loads((run2 / "sweep_off_summary.json").read_text())
        r_on = json.loads((run2 / "sweep_on_summary.json").read_text())
        lines.append(f"| wall time, second pair (s) | {r_off['wall_s']} | {r_on['wall_s']} |"
                     f" {r_off['wall_s'] / r_on['wall_s']:.2f} |")
    lines += [
        "",
        f"Final call (generalizes = test acc ≥ {GENERALIZES} at the budget, or at the stop): "
        f"{agree}/{len(keys)} points agree ({100 * agree / max(1, len(keys)):.1f}%); {len(no_test)} further points"
        " (3 p* on Z23, D11, S4: train fraction ≥ 1) have no test set and no call; they are in the compute"
        " totals.",
        f"Stop reasons (on, all {len(both)} points): {reasons}.",
        f"Points that generalize with the policy off and that the policy stopped as stalled: {len(stalled_grokked)}"
        f" {stalled_grokked if stalled_grokked else ''}; of these, stopped before their test accuracy reached"
        f" {GENERALIZES} (the call changed, a wrong stop): {len(wrong)} {wrong if wrong else ''}.",
        "",
        "Disagreements (group, p*×, wd, seed: off final test acc → on stop reason, stop epoch, test acc at stop):",
        "",
    ]
    for k in disagree:
        lines.append(f"- {k}: {off[k]['final_test_acc']:.3f} (test acc 0.99 at epoch {off[k]['epochs_to_test_acc_0.99']})"
                     f" → {on[k]['stop_reason']} at {on[k]['stop_epoch']}, {round(on[k]['final_test_acc'], 3)};"
                     f" stages {on[k].get('stage_transitions')}")
    if not disagree:
        lines.append("- none")
    lines += ["", "Per group and weight decay: points, generalizing (off), stop reasons (on), mean stop epoch (on):", "",
              "| group | wd | points | generalize (off) | generalize (on) | done | stalled | budget | mean stop epoch |",
              "|---|---|---|---|---|---|---|---|---|"]
    for g in GROUPS:
        for wd in WEIGHT_DECAYS:
            ks = [k for k in both if k[0] == g and k[2] == wd]
            if not ks:
                continue
            rs = [on[k] for k in ks]
            cnt = {r: sum(x["stop_reason"] == r for x in rs) for r in ("done", "stalled", "budget")}
            lines.append(f"| {g} | {wd:g} | {len(ks)} | {sum(call(off[k]) for k in ks)} | {sum(call(on[k]) for k in ks)} |"
                         f" {cnt['done']} | {cnt['stalled']} | {cnt['budget']} |"
                         f" {sum(r['stop_epoch'] for r in rs) / len(rs):.0f} |")
    obs_path = out / "sweep_observe.jsonl"
    if obs_path.exists():
        ob = {(r["group"], r["p_star_multiplier"], r["weight_decay"], r["seed"]): r for r in _read(obs_path)}
        ks = [k for k in keys if k in ob]
        same = sum(replay(ob[k]["stage_observations"], POLICY["confirm"])[:2] == (
            on[k]["stop_reason"], on[k]["stop_epoch"] if on[k]["stop_reason"] != "budget" else -1) for k in ks)

        def calls(variant, confirm):
            agree, stops, epochs, wrong = 0, 0, 0, []
            for k in ks:
                reason, e, acc = replay(ob[k]["stage_observations"], confirm, variant)
                acc = ob[k]["final_test_acc"] if reason == "budget" else acc
                agree += call(off[k]) == (acc is not None and acc >= GENERALIZES)
                stops += reason == "stalled"
                epochs += FIXED["max_epochs"] if reason == "budget" else e
                if call(off[k]) and reason == "stalled" and not (acc is not None and acc >= GENERALIZES):
                    wrong.append(k)
            return agree, stops, epochs, wrong

        lines += ["", "## Replay on recorded trajectories", "",
                  f"`--mode observe` trains every point its whole budget with the rule recording each observation"
                  f" ({len(ks)} points with a test set). Replaying the policy on them gives the on-run's decision"
                  f" (reason and stop epoch) for {same}/{len(ks)} points (members are independent of their"
                  " population up to float rounding of padded sums). The same trajectories under longer"
                  " confirmation windows, and under a variant of rule 2 for the a_G signal (a run enters the"
                  " stall only while its test accuracy is also flat over the window, as the feature signals"
                  " require):", "",
                  "| rule 2 | confirm | calls agreeing with off | stalled stops | member-epochs (these points) |"
                  " wrong stops |", "|---|---|---|---|---|---|"]
        for name, variant in (("as in stages.py", False), ("+ test accuracy flat", True)):
            for confirm in (POLICY["confirm"], 5, 10):
                a, st_, ep, wr = calls(variant, confirm)
                lines.append(f"| {name} | {confirm} | {a}/{len(ks)} | {st_} | {ep} | {len(wr)} {wr if wr else ''} |")
    f3 = out / "fig3_wd0.json"
    if f3.exists():
        d = json.loads(f3.read_text())
        lines += ["", "## Fig. 3 weight-decay-0 seeds (Z71, K 2048, n 2016, Adam lr 1e-3, wd 0, 300 epochs)", "",
                  "| seed | policy | stop reason | stop epoch | first stalled epoch | transitions | test acc at stop |",
                  "|---|---|---|---|---|---|---|"]
        for mode, res in d.items():
            for r in res["rows"]:
                acc = r["final_test_acc"]
                lines.append(f"| {r['seed']} | {mode} | {r['stop_reason']} | {r['stop_epoch']} | {r['stage_stalled_epoch']} |"
                             f" {r['stage_transitions']} | {acc if acc is None else round(acc, 3)} |")
        lines.append("")
        lines.append(" ".join(f"{mode}: {res['wall_s']} s, {res['member_epochs']} member-epochs." for mode, res in d.items()))
    text = "\n".join(lines) + "\n"
    res_dir = ROOT / "results"
    (res_dir / "issue13_policy.md").write_text(text)
    for mode in ("off", "on"):
        (res_dir / f"issue13_policy_{mode}.jsonl").write_text((out / f"sweep_{mode}.jsonl").read_text())
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["sweep", "fig3", "report"])
    ap.add_argument("--mode", choices=["off", "on", "observe"], default="on")
    ap.add_argument("--out", default="/tmp/h10")
    ap.add_argument("--population", type=int, default=21)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.what == "sweep":
        run_sweep(a.mode, out, a.population)
    elif a.what == "fig3":
        run_fig3(out)
    else:
        print(report(out))


if __name__ == "__main__":
    main()
