"""The paper's evaluation protocols: LFW 10-fold verification, rank-k identification and SCface."""

from .identification import IdentificationResult, identify
from .scface import SCfaceResult, evaluate_scface
from .verification import VerificationResult, best_threshold, verify_10fold

__all__ = [
    "IdentificationResult", "SCfaceResult", "VerificationResult", "best_threshold", "evaluate_scface", "identify",
    "verify_10fold",
]
