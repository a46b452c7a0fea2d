"""``python train.py fit --config configs/tiny.yaml``: LightningCLI over HVAEModule and any data module."""

from __future__ import annotations

import argparse
import sys

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .export import unreadable_checkpoint
from .module import ExportPrior, HVAEModule, TrainingSpeed, use_atomic_checkpoints


def one_line(err: BaseException) -> str:
    """The error's message on one line (jsonargparse spreads type errors over several indented lines)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


class HVAECLI(LightningCLI):
    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # parse errors (unknown key, wrong type) raise instead of printing the whole usage: main() reports one line
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def _parse_ckpt_path(self) -> None:
        # Lightning first reads --ckpt_path (weights only) for its hyper-parameters: a refused or unreadable
        # file becomes one line naming it, not a traceback
        try:
            super()._parse_ckpt_path()
        except argparse.ArgumentError:
            raise
        except Exception as err:  # noqa: BLE001 - torch.load's failures have many types
            subcommand = self.config.get("subcommand")
            raise unreadable_checkpoint(self.config[subcommand].get("ckpt_path"), err) from None

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--export_name", type=str, default="prior.pt",
                            help="file name of the compact EMA export written next to the logs")

    def before_fit(self) -> None:
        name = self.config[self.subcommand].get("export_name", "prior.pt")
        if not any(isinstance(cb, ExportPrior) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(ExportPrior(name))
        if not any(isinstance(cb, TrainingSpeed) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(TrainingSpeed())
        use_atomic_checkpoints(self.trainer)


def main(args: list[str] | None = None) -> HVAECLI:
    try:
        return HVAECLI(HVAEModule, L.LightningDataModule, subclass_mode_data=True,
                       save_config_kwargs={"overwrite": True}, args=args)
    except (ValueError, FileNotFoundError, argparse.ArgumentError) as err:
        if args is not None:
            raise
        hint = "; see train.py fit --help" if isinstance(err, argparse.ArgumentError) else ""
        print(f"error: {one_line(err).rstrip('.')}{hint}", file=sys.stderr)
        raise SystemExit(2) from None
