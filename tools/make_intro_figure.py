"""Draw the home page's one-picture explanation into book/images/spillover.svg (run after changing the figure)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "geomis"  # stable element ids: the same figure gives the same bytes

from geomis.toy.figures import plot_spillover_schematic  # noqa: E402

target = Path(__file__).resolve().parents[1] / "book" / "images" / "spillover.svg"
fig = plot_spillover_schematic(alpha=1.0, cos_near=0.8, cos_far=0.1)
fig.savefig(target, format="svg", metadata={"Date": None})
print(f"wrote {target}")
