"""``python train.py fit --config configs/tiny.yaml``: LightningCLI over HVAEModule and any data module."""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI

from .module import ExportPrior, HVAEModule


class HVAECLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--export_name", type=str, default="prior.pt",
                            help="file name of the compact EMA export written next to the logs")

    def before_fit(self) -> None:
        name = self.config[self.subcommand].get("export_name", "prior.pt")
        if not any(isinstance(cb, ExportPrior) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(ExportPrior(name))


def main(args: list[str] | None = None) -> HVAECLI:
    try:
        return HVAECLI(HVAEModule, L.LightningDataModule, subclass_mode_data=True,
                       save_config_kwargs={"overwrite": True}, args=args)
    except (ValueError, FileNotFoundError) as err:
        if args is not None:
            raise
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        raise SystemExit(2) from None
