"""`python -m mlptrain` runs the command-line interface."""

from mlptrain.cli.main import main

if __name__ == "__main__":
    main()
