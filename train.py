"""Train a hierarchical VAE prior: ``python train.py fit --config configs/tiny.yaml``."""
from hvae.cli import main

if __name__ == "__main__":
    main()
