"""`python -m cvserve.cli ...`, as the `cvserve` console script."""

from cvserve.cli import app

if __name__ == "__main__":
    app()
