"""Evaluation: harmlessness, over-refusal and helpfulness of models, and a check of the judge itself.

``run_eval(load_eval_config(path))`` answers the prompt sets (or reads existing answers), scores
them and returns the results dict; ``write_report(results, out_dir)`` writes ``results.json``,
``chart.png`` and prints the tables. The judge-free refusal detector is ``safer_instruct.refusal``.
"""

from safer_instruct.evaluate.report import write_report
from safer_instruct.evaluate.runner import EvalConfig, load_eval_config, run_eval

__all__ = ["EvalConfig", "load_eval_config", "run_eval", "write_report"]
