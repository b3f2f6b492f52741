"""The small helpers the seed imports from one place: code extraction, sandboxed evaluation, JSON I/O."""

from common.code_extraction import extract_code
from common.sandbox import ExecutionResult, Program, evaluate_code, evaluate_many
from common.utils import load_json, save_json

__all__ = ["ExecutionResult", "Program", "evaluate_code", "evaluate_many", "extract_code", "load_json", "save_json"]
