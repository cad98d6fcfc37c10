"""The `trusted-loader` command line (`loader.cli.main:main`) and the demo.

The top of the loader: nothing else imports it.
"""
