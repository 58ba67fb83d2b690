"""Functions that the ``bicc_*`` task YAMLs reference with ``!function``.

lm-eval loads this file by path, so it only re-exports from ``bicc_lab.eval``
(one implementation, one grading cache).
"""

from bicc_lab.eval.data import make_custom_dataset
from bicc_lab.eval.lmeval import PrescoreFilter, mean_of_lists, process_results

dataset_math500 = make_custom_dataset("math500")
dataset_aime24 = make_custom_dataset("aime24")
dataset_aime25 = make_custom_dataset("aime25")
dataset_amc23 = make_custom_dataset("amc23")
dataset_gsm8k = make_custom_dataset("gsm8k")
dataset_minerva = make_custom_dataset("minerva")
dataset_olympiad = make_custom_dataset("olympiad")
dataset_arith = make_custom_dataset("arith")
dataset_word_arith = make_custom_dataset("word_arith")

__all__ = [
    "PrescoreFilter",
    "mean_of_lists",
    "process_results",
    "dataset_math500",
    "dataset_aime24",
    "dataset_aime25",
    "dataset_amc23",
    "dataset_gsm8k",
    "dataset_minerva",
    "dataset_olympiad",
    "dataset_arith",
    "dataset_word_arith",
]
