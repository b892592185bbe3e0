"""The ``lensteer`` command line: :mod:`~lensteer.cli.parser` (the subcommands and their options) and
:mod:`~lensteer.cli.commands` (what each does).

``lensteer run`` runs the whole study on the embedded model (or ``--model``): locate -> choose the
site -> calibrate -> steer -> evaluate -> figures (:func:`lensteer.study.runner.run_study`; with
``--executor ray`` on Ray workers, :mod:`lensteer.study.distributed`). The stages have their own
subcommands: ``probe`` (layer-by-layer probing), ``locate`` (probing + activation patching + the
recommended site, with figures), ``steer`` (unsteered vs steered text side by side), ``evaluate`` (one
saved steering against the baseline, or on public benchmark files with ``--eval-set``), ``chat``
(a conversation answered unsteered and steered side by side), ``figures`` and ``report`` (from saved results, no model) and
``organism`` (fine-tune a misaligned model organism and measure it against its base).
"""

import sys

from lensteer.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lensteer.errors import LensteerError

    try:
        return int(args.func(args))
    except LensteerError as err:
        print(f"lensteer: error: {err}", file=sys.stderr)
        return 2
