"""Helpers for tests, notebooks and the benchmark: the property checks every attention variant must
pass (`variants`: `check_variant("rotary")`) and models built for tests (`pairs`: a speculative
pair that agrees by construction)."""
from neojax.testing.pairs import agreeing_pair, draft_width, widen
from neojax.testing.variants import CHECKS, check_causality, check_variant, check_window, variant_config

__all__ = ["CHECKS", "agreeing_pair", "check_causality", "check_variant", "check_window", "draft_width",
           "variant_config", "widen"]
