"""The `trusted-loader` command line (`loader.cli.commands`) and the demo.

The top of the loader: nothing else imports it. `main` is the console script's entry point
(`trusted-loader = "loader.cli:main"`), imported on call so that importing one command's module
does not import them all.
"""


def main(argv: list[str] | None = None) -> int:
    """Run the `trusted-loader` command line; returns its exit code."""
    from loader.cli.commands import main as run

    return run(argv)
