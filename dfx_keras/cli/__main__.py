"""``python -m dfx_keras.cli COMMAND [--flag=value ...]``: see ``dfx_keras.cli``."""

from dfx_keras.cli import main

main()
