"""``python -m worker``: the framework's commands plus dispatch, token and talk."""

from worker.cli import main

if __name__ == "__main__":
    main()
