"""Draw organisms against their base from their measure.json files (lensteer.plotting.plot_organisms).

python scripts/experiments/plot_organisms.py docs/organisms/good_advice docs/organisms/bad_advice --out figures/organisms
"""

import argparse
import json
from pathlib import Path

from lensteer.plotting import plot_organisms, save_figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folders", nargs="+", help="organism folders, each with a measure.json (drawn in this order)"
    )
    parser.add_argument("--out", default="figures/organisms", help="figure stem (.pdf and .png are written)")
    args = parser.parse_args(argv)
    measures = {Path(f).name: json.loads((Path(f) / "measure.json").read_text()) for f in args.folders}
    fig, _ = plot_organisms(measures)
    for path in save_figure(fig, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
