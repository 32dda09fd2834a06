"""CLI: ``python -m shared.training {generate-data,train,evaluate,preprocess,ablation,bench}``."""

from shared.training.cli import main

if __name__ == "__main__":
    main()
