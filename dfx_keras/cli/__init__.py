"""The command-line programs: one module per command, each turning its flags into a config
object (``dfx_keras.config``) and making one library call.

``python -m dfx_keras.cli COMMAND [--flag=value ...]`` runs any of them; the console scripts
(``dfx-train``, ``dfx-evaluate``, ``dfx-export``, ``dfx-predict``, ``dfx-demo``,
``dfx-demo-corpus``) and the root ``train.py`` / ``evaluate.py`` call the functions below.
Each silences TensorFlow's start-up noise first, then imports its command's module, which
imports TensorFlow: the order matters, since TensorFlow reads its log settings once, at load
time. Only this package reads absl FLAGS.
"""

import importlib
import sys

from dfx_keras.cli.quiet import quiet_tensorflow

COMMANDS = ("train", "evaluate", "export", "predict", "demo_corpus")  # each a module of this package


def run(command: str, usage_from_command: bool = False) -> None:
    """Run ``command`` (one of COMMANDS) on ``sys.argv``: quiet TensorFlow, define the command's
    flags (on demand, so two commands' flags, both named --model, never meet), parse, run.
    ``usage_from_command``: usage errors show the command's docstring (absl shows ``__main__``'s)."""
    quiet_tensorflow()
    from absl import app  # after: absl's log handler keeps the stderr it finds when first imported

    module = importlib.import_module(f"dfx_keras.cli.{command}")
    module.define_flags()
    if usage_from_command:
        sys.modules["__main__"].__doc__ = module.__doc__
    app.run(module.main)


# Console scripts (setup.cfg) and the root scripts; named *_main because each command's module
# takes the command's own name.
def train_main():
    run("train")


def evaluate_main():
    run("evaluate")


def export_main():
    run("export")


def predict_main():
    run("predict")


def demo_corpus_main():
    run("demo_corpus")


def demo_main():
    """``dfx-demo [--flag=value ...]``: train.py with the shipped demo recipe, from any folder
    (an installed wheel has no configs/ folder to point ``--flagfile`` at); flags given after
    it override the recipe's."""
    from dfx_keras import configs

    sys.argv[1:1] = [f"--flagfile={configs.flagfile('demo')}"]
    run("train")


def main() -> None:
    """``python -m dfx_keras.cli COMMAND [flags]``."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command not in COMMANDS:
        sys.exit(f"usage: python -m dfx_keras.cli {{{','.join(COMMANDS)}}} [--flag=value ...] (--helpfull lists "
                 f"a command's flags)" + (f"; unknown command {command!r}" if command else ""))
    sys.argv = [f"{sys.argv[0]} {command}", *sys.argv[2:]]
    run(command, usage_from_command=True)
