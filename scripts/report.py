#!/usr/bin/env python3
"""Summarise a pipeline's rounds from their manifests: a table on stdout, and
report.json + accuracy.svg in the pipeline's artifacts folder."""
import json
import sys
from pathlib import Path


def load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    run = Path(sys.argv[1])
    rows = []
    zero = load(run / "round-0" / "eval.json")
    if zero:
        rows.append({"round": 0, "accuracy": zero["metrics"].get("accuracy"), "macro_f1": zero["metrics"].get("macro_f1"),
                     "clients": 0, "mean_client_parameters": None, "mean_client_mib": None, "train_seconds": None})
    r = 1
    while (m := load(run / f"round-{r}" / "global" / "manifest.json")):
        validation = m["metrics"].get("validation", {})
        trained = [load(p) for p in sorted((run / f"round-{r}" / "trained").glob("*/manifest.json"))]
        seconds = sum(t["metrics"]["wall_seconds"] for t in trained if t)
        rows.append({
            "round": r,
            "accuracy": validation.get("accuracy"),
            "macro_f1": validation.get("macro_f1"),
            "clients": m["metrics"]["clients"],
            "mean_client_parameters": m["metrics"]["mean_client_parameters"],
            "mean_client_mib": m["metrics"]["mean_client_bytes"] / 2**20,
            "train_seconds": seconds,
        })
        r += 1
    if not rows:
        print(f"{run}: no rounds yet")
        return
    fmt = lambda v, f: "-" if v is None else format(v, f)
    print(f"{run.name}: round  accuracy  macro-F1  clients  mean client params  MiB/client  local training s")
    for row in rows:
        print(f"{'':>{len(run.name)}}  {row['round']:>5}  {fmt(row['accuracy'], '8.4f')}  {fmt(row['macro_f1'], '8.4f')}  "
              f"{row['clients']:>7}  {fmt(row['mean_client_parameters'] and row['mean_client_parameters'] / 1e6, '17.2f')}M"
              f"  {fmt(row['mean_client_mib'], '10.1f')}  {fmt(row['train_seconds'], '15.0f')}")
    (run / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_svg(run / "accuracy.svg", run.name, [(x["round"], x["accuracy"]) for x in rows if x["accuracy"] is not None])


def write_svg(path: Path, title: str, points) -> None:
    """A small line chart of validation accuracy per round, without plotting libraries."""
    w, h, pad = 480, 300, 50
    rounds = max(p[0] for p in points) or 1
    lo = min(0.5, min(p[1] for p in points))
    x = lambda r: pad + (w - 2 * pad) * r / rounds
    y = lambda a: h - pad - (h - 2 * pad) * (a - lo) / (1 - lo)
    line = " ".join(f"{x(r):.1f},{y(a):.1f}" for r, a in points)
    ticks = "".join(f'<text x="{x(r):.1f}" y="{h - pad + 18}" text-anchor="middle">{r}</text>' for r in range(rounds + 1))
    levels = [lo + i * (1 - lo) / 5 for i in range(6)]
    grid = "".join(f'<line x1="{pad}" x2="{w - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                   f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>' for v in levels)
    dots = "".join(f'<circle cx="{x(r):.1f}" cy="{y(a):.1f}" r="3"/>' for r, a in points)
    path.write_text(f'''<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>{grid}{ticks}
<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}: validation accuracy by round</text>
<text x="{w / 2}" y="{h - 8}" text-anchor="middle">round</text>
<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/><g fill="#1f77b4">{dots}</g>
</svg>
''')


if __name__ == "__main__":
    main()
