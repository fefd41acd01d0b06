"""Regression renders: workflows with golden images, compared and reported (flowrun test, the pytest plugin)."""
