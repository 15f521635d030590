"""The paper's evaluation protocols: LFW 10-fold verification and rank-k identification."""

from .identification import IdentificationResult, identify
from .verification import VerificationResult, best_threshold, verify_10fold

__all__ = ["IdentificationResult", "VerificationResult", "best_threshold", "identify", "verify_10fold"]
