"""``python -m synfast`` runs the command line."""

from synfast.cli import main

if __name__ == "__main__":
    main()
