"""`python -m mlptrain` runs the command-line interface."""

from mlptrain.cli import main

if __name__ == "__main__":
    main()
