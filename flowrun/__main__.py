"""`python -m flowrun` is the same as the `flowrun` command."""

from flowrun.cli import main

if __name__ == "__main__":
    main()
