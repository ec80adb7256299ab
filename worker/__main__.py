"""`python -m worker` is the same as the `threadsync` command."""

from worker.cli import main

if __name__ == "__main__":
    main()
