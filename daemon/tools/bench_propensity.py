"""How much exploration the position-bias estimate needs: `estimate_randomized`'s error on the family's shops.

Every page of each shop is explored (fully shuffled and marked, as the scorer's exploration marks its
responses), and clicked by the shop's own click model: examination 1/(k+1)^eta, click noise that does not
depend on the position, trust bias, stopping after a purchase. The pages are grouped as training groups them
(`adapters.dataset.build_groups`: pages without a click, or with only clicks, carry no preference and are
dropped). Reported per shop and number of explored pages, over seeds: the max relative error over positions
1-10 against the shop's examination curve (the #13 target is 20%). Closed-loop shops are ordered by their
lexical ranker here (no model: a full shuffle makes the order matter only through which items fill the
page). `--noise` replaces every shop's click noise (0 shows what the noise costs).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import numpy as np

from adapters.dataset import build_groups
from adapters.propensity import estimate_randomized, max_relative_error
from daemon.settings import Settings
from daemon.tools.shop_specs import ShopSpec, family_specs, with_policy
from daemon.tools.shops import FamilyShop

_POSITIONS = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shops", default="all", help="Shops of the family, comma-separated, or all (default).")
    p.add_argument("--pages", default="300,1000,3000", help="Explored pages per estimate, comma-separated.")
    p.add_argument("--seeds", default="1,2,3", help="Seeds, comma-separated (default 1,2,3).")
    p.add_argument("--noise", type=float, default=None, help="Replace every shop's click noise with this rate.")


def explored_spec(spec: ShopSpec, noise: float | None = None) -> ShopSpec:
    """`spec` with every page explored, a model-free order, and optionally another click noise."""
    clicks = spec.clicks if noise is None else replace(spec.clicks, noise=noise)
    policy = "lexical" if spec.policy == "closed" else spec.policy
    return with_policy(spec, explore_rate=1.0, policy=policy, clicks=clicks)


def propensity_error(spec: ShopSpec, seed: int, pages: int) -> dict[str, Any]:
    """Estimate the curve from `pages` explored pages of `spec`; its error against the shop's truth."""
    shop = FamilyShop(spec, seed)
    groups = build_groups(list(shop.traffic(pages)), lambda _: None)
    n = min(_POSITIONS, spec.page_size)
    curve = estimate_randomized(groups, n)
    return {"error": max_relative_error(curve.values, spec.clicks.curve(n), n), "pages_kept": len(groups),
            "informative_clicks": curve.n_clicks}


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    del settings  # simulated shops only
    specs = family_specs(args.shops)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = []
    for spec in specs:
        explored = explored_spec(spec, args.noise)
        for pages in (int(p) for p in args.pages.split(",") if p.strip()):
            cells = [propensity_error(explored, seed, pages) for seed in seeds]
            errors = [c["error"] for c in cells]
            rows.append({"shop": spec.name, "eta": spec.clicks.eta, "noise": explored.clicks.noise,
                         "explored_pages": pages, "seeds": seeds,
                         "max_rel_error_1_10": [round(e, 3) for e in errors],
                         "mean": round(float(np.mean(errors)), 3), "within_20pct": sum(e <= 0.2 for e in errors),
                         "pages_kept_mean": round(float(np.mean([c["pages_kept"] for c in cells])), 1),
                         "informative_clicks_mean": round(float(np.mean([c["informative_clicks"] for c in cells])),
                                                          1)})
    return {"estimator": "randomized", "rows": rows}
