"""The summary plots: seed spread as bands, full-key legends, one colour per cell in every plot, whole-number round
ticks, a title naming model, data and method, nothing outside the saved image."""
import matplotlib
import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from fedft import plots, summary

matplotlib.use("Agg")


def record(method: str, partition: str, seed: int, accs: list[float], mb_per_round: float = 1.0) -> dict:
    rounds = [{"round": t + 1, "accuracy": a, "loss": 1.0, "bytes_up": mb_per_round * 5e5, "bytes_down": mb_per_round * 5e5}
              for t, a in enumerate(accs)]
    return {"config": {"model": {"name": "minilm"}, "data": {"name": "wordnet-nouns", "partition": partition,
                                                             "alpha": 0.5},
                       "method": {"name": method}, "fl": {"seed": seed}},
            "rounds": rounds, "_dir": f"/runs/{method}-{partition}-{seed}",
            "final": {"accuracy": accs[-1], "bytes_total": mb_per_round * 1e6 * len(accs), "payload_bytes": 5e5,
                      "trainable_params": 10}}


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots would save, by file name, kept open for inspection."""
    kept = {}
    monkeypatch.setattr(plots, "save", lambda fig, path: kept.__setitem__(path.name, fig))
    yield kept
    import matplotlib.pyplot as plt
    plt.close("all")


def grid_records():
    rng = np.random.default_rng(0)
    return [record(m, p, s, list(np.clip(np.linspace(0.2, 0.7, 5) + rng.normal(0, 0.05, 5), 0, 1)),
                   mb_per_round=0.3 if m == "lora" else 90.0)
            for m in ("lora", "full") for p in ("iid", "dirichlet") for s in range(3)]


def test_bands_full_keys_and_one_colour_per_cell(figures):
    records = grid_records()
    keys, rows = summary.summarise(records)
    assert keys == ["data.partition", "method.name"]
    summary.plot_summary(__import__("pathlib").Path("/unused"), keys, records, rows)
    curves, frontier = figures["curves.png"], figures["frontier.png"]
    by_round, by_mb = curves.axes
    labels = [t.get_text() for t in by_mb.get_legend().get_texts()]
    assert sorted(labels) == sorted(f"data.partition={p}, method.name={m}"
                                    for m in ("lora", "full") for p in ("iid", "dirichlet"))
    for ax in (by_round, by_mb):  # one band per cell, spanning the seeds' spread
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 4
    line = {ln.get_label(): ln for ln in by_round.get_lines()}
    name = "data.partition=iid, method.name=lora"
    members = [r for r in records if r["config"]["method"]["name"] == "lora" and r["config"]["data"]["partition"] == "iid"]
    accs = np.array([[x["accuracy"] for x in m["rounds"]] for m in members])
    np.testing.assert_allclose(line[name].get_ydata(), accs.mean(axis=0))
    band = [c for c in by_round.collections if isinstance(c, PolyCollection)][
        [ln.get_label() for ln in by_round.get_lines()].index(name)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.max() == pytest.approx((accs.mean(0) + accs.std(0, ddof=1)).max())
    assert ys.min() == pytest.approx((accs.mean(0) - accs.std(0, ddof=1)).min())
    # the same cell has the same colour in both plots
    front = {c.get_label(): c for c in frontier.axes[0].containers}
    for label, ln in line.items():
        marker = front[label].lines[0]
        assert matplotlib.colors.same_color(marker.get_color(), ln.get_color())
    assert len({matplotlib.colors.to_hex(ln.get_color()) for ln in line.values()}) == 4


def test_mb_axis_is_log_so_payloads_apart_by_orders_of_magnitude_both_show(figures):
    records = grid_records()  # lora sends 0.3 MB a round, full 90 MB
    keys, rows = summary.summarise(records)
    summary.plot_summary(__import__("pathlib").Path("/unused"), keys, records, rows)
    by_round, by_mb = figures["curves.png"].axes
    assert by_round.get_xscale() == "linear" and by_mb.get_xscale() == "log"
    lora = [ln for ln in by_mb.get_lines() if "lora" in ln.get_label()][0]
    lo, hi = by_mb.get_xlim()
    # on the log axis the LoRA curve spans a visible share of the width (on a linear one it is < 1%)
    xs = lora.get_xdata()
    assert (np.log(xs.max()) - np.log(xs.min())) / (np.log(hi) - np.log(lo)) > 0.1
    by_mb.figure.canvas.draw()
    assert all("e" not in t.get_text() and "10^" not in t.get_text() for t in by_mb.get_xticklabels())


def test_round_ticks_are_whole_numbers_and_title_names_model_data_method(figures):
    records = [record("lora", "dirichlet", s, [0.3, 0.4, 0.5, 0.55, 0.6]) for s in range(3)]
    keys, rows = summary.summarise(records)
    summary.plot_summary(__import__("pathlib").Path("/unused"), keys, records, rows)
    fig = figures["curves.png"]
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    visible = [t for t in ticks if 1 <= t <= 5]
    assert visible and all(float(t).is_integer() for t in visible)
    heading = fig._suptitle.get_text()
    assert "minilm" in heading and "wordnet-nouns" in heading and "lora" in heading and "dirichlet 0.5" in heading


def test_saved_image_holds_the_legend_outside_the_axes(tmp_path):
    records = grid_records()
    keys, rows = summary.summarise(records)
    summary.plot_summary(tmp_path, keys, records, rows)
    from PIL import Image

    for name in ("curves.png", "frontier.png"):
        w, _ = Image.open(tmp_path / name).size
        # the legend sits to the right of the axes; a tight box widens the image to hold it (a plain 7.5-inch
        # frontier at 100 dpi would be 750 px wide and cut the legend off)
        assert w > {"curves.png": 1100, "frontier.png": 750}[name]
